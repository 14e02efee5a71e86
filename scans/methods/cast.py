"""CAST, conditional activation steering (Lee et al., ICLR 2025; IBM/activation-steering), a successor row.

- **Condition vector** c^l (per layer): the first principal component of contrast pairs of prompts (a harmful
  training prompt with a benign one, Alpaca), each pair centred on its own midpoint (`pca_pairwise`), states averaged
  over all the prompt's tokens; signed so that the harmful prompt of most pairs projects higher.
- **Condition**: sim(h, c) = cos(h, tanh(proj_c h)), proj_c h = (h·c)c for unit c, h the prompt's mean state at the
  condition layer; it fires where sim > θ (`above`) or sim < θ (`below`). Layer, θ and direction are chosen by grid
  on the validation split's labels (F1 of firing on the prompts the behaviour is for; the paper's
  `find_best_condition_point`), over the first half of the layers as the paper searches.
- **Behaviour**: where the condition fires, the refusal vectors v^l are added with coefficient `behaviour_sign`·α from
  the end of the instruction on. The paper adds refusal to the prompts the condition calls harmful; against
  over-refusal the behaviour here is compliance (−α·v) on the prompts it calls benign (docs/differences.md). α and
  the steering layers are the headline SCANS row's (chosen on validation), so CAST and SCANS differ in the condition.

The condition is checked per row on the unsteered prompt (the reference library checks row 0 of a batch only).
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from scans.artifacts import load_tensors, save_tensors, stable_hash
from scans.data import BENIGN, HARMFUL
from scans.errors import ConfigError
from scans.methods import headline
from scans.methods.base import Method, layer_spec
from scans.methods.fitted import fit_key
from scans.methods.pools import PoolSpec, draw_pools, prompt_states, query_states
from scans.steering import Steering
from scans.steering.vectors import steering_vectors

VECTORS = "condition.safetensors"
FIT, CONDITION = "vectors", "condition"
DIRECTIONS = ("above", "below")


def pairwise_pca(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """(D,) unit first principal component of paired rows (N, D) each centred on its pair's midpoint, signed so that
    the positive row of most pairs projects higher."""
    mid = (positive + negative) / 2
    centred = torch.cat([positive - mid, negative - mid]).double()
    _, _, vh = torch.linalg.svd(centred - centred.mean(0), full_matrices=False)
    c = vh[0]
    if int(((positive.double() - negative.double()) @ c > 0).sum()) < len(positive) / 2:
        c = -c
    return c.float()


def condition_similarity(states: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """CAST's sim(h, proj_c h) with tanh, per row: states (N, D), c (D,) unit."""
    projected = torch.tanh((states @ c)[:, None] * c[None, :])
    return torch.nn.functional.cosine_similarity(states, projected, dim=1)


def best_condition(sims: np.ndarray, fire_on: np.ndarray) -> tuple[float, str, float]:
    """(θ, direction, F1) of the threshold rule with the best F1 of firing on `fire_on` (ties: the first found, θ
    ascending, `above` before `below`)."""
    order = np.sort(np.unique(sims))
    candidates = np.concatenate([[order[0] - 1e-6], (order[:-1] + order[1:]) / 2, [order[-1] + 1e-6]])
    best = (-1.0, 0.0, DIRECTIONS[0])
    positives = fire_on.sum()
    for t in candidates:
        for direction in DIRECTIONS:
            fired = sims > t if direction == "above" else sims < t
            tp = float((fired & fire_on).sum())
            f1 = 2 * tp / (fired.sum() + positives) if fired.sum() + positives else 0.0
            if f1 > best[0] + 1e-12:
                best = (f1, float(t), direction)
    return best[1], best[2], best[0]


@dataclass(frozen=True)
class Cast(Method):
    harmful: tuple = ("harmfulq", "harmbench", "tdc2023")
    benign: tuple = ("alpaca",)
    pairs: int = 256  # contrast pairs: this many prompts drawn from each side, before the rule
    condition_layers: object = None  # candidate condition layers; None: the first half of the layers (the paper)
    condition_layer: int | None = None  # with threshold and direction: fixed; None: chosen on validation
    threshold: float | None = None
    direction: str | None = None
    fire_on: str = BENIGN  # the prompts the behaviour is for (the label the grid's F1 scores)
    behaviour_sign: float = -1.0  # -1: compliance where the condition fires (+1: the paper's refusal)
    alpha: float | None = None  # None: the headline SCANS row's, with its steering layers
    steer_layers: object = None
    positions: str = "from_instruction_end"
    normalize: bool = True
    seed: int = 0

    def __post_init__(self):
        for f in ("harmful", "benign"):
            object.__setattr__(self, f, PoolSpec.of(getattr(self, f)).sources)
        object.__setattr__(self, "steer_layers", layer_spec(self.steer_layers))
        object.__setattr__(self, "condition_layers", layer_spec(self.condition_layers))

    def key(self, run) -> str:
        leave = ("condition_layers", "condition_layer", "threshold", "direction", "fire_on", "behaviour_sign",
                 "alpha", "steer_layers", "positions", "normalize")  # fmt: skip
        return fit_key(run, self, [*self.harmful, *self.benign], leave)

    def candidates(self, run) -> tuple[int, ...]:
        if self.condition_layers is None:
            return tuple(range(max(1, run.num_layers // 2)))
        spec = self.condition_layers
        return spec if isinstance(spec, tuple) else tuple(run.layers_of(spec, "method.condition_layers"))

    def resolve(self, run) -> Cast:
        if self.direction is not None and self.direction not in DIRECTIONS:
            raise ConfigError(f"{self.name}: direction={self.direction!r}; expected one of {', '.join(DIRECTIONS)}")
        if self.fire_on not in (BENIGN, HARMFUL):
            raise ConfigError(f"{self.name}: fire_on={self.fire_on!r}; expected {BENIGN} or {HARMFUL}")
        head = headline(run)
        layers = head.steer_layers if self.steer_layers is None else self.steer_layers
        if not isinstance(layers, tuple):
            layers = tuple(run.layers_of(layers))
        out = replace(self, alpha=head.alpha if self.alpha is None else float(self.alpha), steer_layers=layers)
        if self.condition_layer is None:
            c = run.artifact("prepared", method=out, part=CONDITION).summary
            out = replace(out, condition_layer=c["layer"], threshold=c["threshold"], direction=c["direction"])
        return out

    def upstream(self, run) -> dict:
        return {"extract": run.key("vectors"), "condition": self.key(run)}

    def artifact_key(self, run, part: str) -> str:
        if part == FIT:
            return f"cast-{self.key(run)}"
        inputs = [self.key(run), self.candidates(run), self.fire_on, run.key("tuned")]
        return f"cast-condition-{stable_hash(inputs)}"

    def build_artifact(self, run, tmp: Path, part: str) -> dict:
        return self._fit(run, tmp) if part == FIT else self._choose(run)

    def prepare(self, run) -> dict:
        summary = run.artifact("prepared", method=self, part=FIT).summary
        choice = run.artifact("prepared", method=self, part=CONDITION).summary
        condition = {k: choice[k] for k in ("layer", "threshold", "direction", "f1")}
        return {**summary, "condition": condition, "choice_seconds": choice["seconds"]}

    def _fit(self, run, tmp: Path) -> dict:
        """Condition vectors of every layer from the contrast pairs (each side cleared by the disjointness rule)."""
        start = time.perf_counter()
        sides = {"harmful": PoolSpec(self.harmful, self.pairs), "benign": PoolSpec(self.benign, self.pairs)}
        pools, overlap = draw_pools(run, sides, self.seed, "CAST")
        harmful, benign = pools["harmful"], pools["benign"]
        n = min(len(harmful), len(benign))
        random.Random(self.seed).shuffle(benign)  # each harmful prompt paired with a random benign one
        layers = range(run.num_layers)
        pos = prompt_states(run, harmful[:n], layers, "CAST states (harmful)", reduce="mean")
        neg = prompt_states(run, benign[:n], layers, "CAST states (benign)", reduce="mean")
        vectors = torch.stack([pairwise_pca(pos[:, layer], neg[:, layer]) for layer in layers])
        save_tensors(tmp / VECTORS, {"condition": vectors})
        return {"pairs": n, "overlap": overlap,
                "seconds": time.perf_counter() - start}  # fmt: skip

    def vectors(self, run) -> torch.Tensor:
        return load_tensors(run.artifact("prepared", method=self, part=FIT).path / VECTORS)["condition"]

    def _choose(self, run) -> dict:
        """The condition point with the best F1 on the whole validation split (labels only, no generation)."""
        start = time.perf_counter()
        prompts = [p for ps in run.artifact("validation_split").values() for p in ps]
        fire_on = np.array([p.label == self.fire_on for p in prompts])
        layers = self.candidates(run)
        states = query_states(run, prompts, "validation-split", layers, reduce="mean")
        vectors = self.vectors(run)
        grid = []
        for i, layer in enumerate(layers):
            sims = condition_similarity(states[:, i], vectors[layer]).numpy()
            threshold, direction, f1 = best_condition(sims, fire_on)
            grid.append({"layer": layer, "threshold": threshold, "direction": direction, "f1": f1})
        best = max(grid, key=lambda g: g["f1"])  # first found on ties: the earliest layer
        return {**best, "grid": grid, "prompts": len(prompts), "seconds": time.perf_counter() - start}

    def fires(self, run, prompts: Sequence, name: str | None) -> torch.Tensor:
        states = query_states(run, prompts, name, (self.condition_layer,), reduce="mean")[:, 0]
        sims = condition_similarity(states, self.vectors(run)[self.condition_layer])
        return sims > self.threshold if self.direction == "above" else sims < self.threshold

    def coefficients(self, run, prompts, name) -> torch.Tensor:
        return self.fires(run, prompts, name).float() * self.behaviour_sign * float(self.alpha)

    def intervention(self, run) -> Steering:
        return Steering(
            steering_vectors(run.artifact("vectors")["mean_difference"], self.normalize),
            self.steer_layers,
            float(self.alpha),
            self.positions,
        )
