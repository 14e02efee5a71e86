"""False-refusal ablation (Wang, Hu, Röttger, Plank, ICLR 2025; mainlp/False-Refusal-Mitigation), beyond the paper.

A false-refusal direction is the difference of mean states (output of a decoder layer, at the end of the instruction)
between pseudo-harmful prompts (harmless look-alikes of harmful requests) and harmless ones. It is orthogonalised
against the true refusal direction (harmful minus harmless) by `coefficient` (1: fully), normalised, and ablated from
the weights: every matrix that writes to the residual stream (the token embeddings, each attention output and MLP
down projection) has its component along the direction projected out, so no state ever carries it and inference
costs nothing extra. All prompts come from training pools (DRO's look-alike pairs, Alpaca), never from a reported
or validation set, and pass the disjointness rule.

The layer whose direction is ablated is chosen on the validation split (reference behaviour: filters on KL and
refusal score; here the `tune` stage's rule): the least benign refusal among the candidates whose harmful refusal
stays within `tune.max_harmful_drop` of Default's.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from scans.artifacts import load_tensors, save_tensors, stable_hash
from scans.config import parse_layers
from scans.data import load_prompts
from scans.methods.base import Intervention, Method, check_disjoint
from scans.methods.fitted import choose_on_validation, fit_key
from scans.models import decoder_layers, encode
from scans.steering import hidden_states

DIRECTIONS = "directions.safetensors"
DIRECTIONS_PART, LAYER_PART = "directions", "layer"


def orthogonalise(direction: torch.Tensor, against: torch.Tensor, coefficient: float = 1.0) -> torch.Tensor:
    """`direction` minus `coefficient` times its projection on `against`, normalised to unit length."""
    unit = against / against.norm().clamp_min(1e-12)
    out = direction - coefficient * (direction @ unit) * unit
    return out / out.norm().clamp_min(1e-12)


def residual_writers(model) -> list[tuple[torch.nn.Parameter, str]]:
    """The weights that write to the residual stream, with the side the hidden size is on ("rows": (V, D) embedding,
    "out": (D, ·) linear weight)."""
    out = [(model.get_input_embeddings().weight, "rows")]
    for block in decoder_layers(model):
        out.append((block.self_attn.o_proj.weight, "out"))
        out.append((block.mlp.down_proj.weight, "out"))
    return out


@contextmanager
def ablated(model, direction: torch.Tensor) -> Iterator[None]:
    """The model with `direction` (unit, (D,)) projected out of every residual-stream writer; restored on exit."""
    saved = []
    try:
        with torch.no_grad():
            for weight, side in residual_writers(model):
                saved.append((weight, weight.detach().clone()))
                d = direction.to(weight.device, weight.dtype)
                if side == "rows":
                    weight -= (weight @ d)[:, None] * d[None, :]
                else:
                    weight -= d[:, None] * (d @ weight)[None, :]
        yield
    finally:
        with torch.no_grad():
            for weight, original in saved:
                weight.copy_(original)


@dataclass(frozen=True)
class Ablation(Intervention):
    direction: torch.Tensor | None = None

    @contextmanager
    def active(self, model, rows):
        with ablated(model, self.direction):
            yield

    def compactable(self) -> bool:
        return True  # a weight edit, the same for every row


@dataclass(frozen=True)
class FalseRefusalAblation(Method):
    pseudo_harmful: str = "dro_harmless"
    harmful: str = "dro_harmful"
    harmless: str = "alpaca"
    harmless_size: int = 100
    pool_size: int | None = None  # a seeded subset of the other two pools too (experiment=smoke); None: all
    coefficient: float = 1.0
    layer: int | None = None  # None: chosen among `candidate_layers` on the validation split
    candidate_layers: tuple = ()
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "candidate_layers", tuple(int(x) for x in self.candidate_layers))

    def key(self, run) -> str:
        sets = [self.pseudo_harmful, self.harmful, self.harmless]
        return fit_key(run, self, sets, leave_out=("layer", "candidate_layers"))

    def upstream(self, run) -> dict:
        return {"directions": self.key(run)}

    def resolve(self, run) -> FalseRefusalAblation:
        if self.layer is not None:
            return self
        chosen = replace(self, layer=self.choose_layer(run))
        object.__setattr__(chosen, "_chosen", True)  # not a setting: its layer came from the validation choice
        return chosen

    def artifact_key(self, run, part: str) -> str:
        """The `prepared` artifacts of this method: the directions, and the layer chosen for them."""
        if part == DIRECTIONS_PART:
            return f"fr-ablation-{self.key(run)}"
        return f"fr-ablation-layer-{stable_hash([self.key(run), self.candidate_layers, run.key('tuned')])}"

    def build_artifact(self, run, tmp: Path, part: str) -> dict:
        return self._build(run, tmp) if part == DIRECTIONS_PART else self._choose(run)

    def prepare(self, run) -> dict:
        """The per-layer false-refusal directions (cached), with the layer choice once it is made."""
        summary = run.artifact("prepared", method=self, part=DIRECTIONS_PART).summary
        if self.candidate_layers and getattr(self, "_chosen", False):  # its layer was chosen on validation: the record
            choice = run.artifact("prepared", method=self, part=LAYER_PART).summary
            summary = {**summary, "layer": choice["layer"], "choice_seconds": choice.get("seconds", 0.0)}
        return summary

    def _build(self, run, tmp) -> dict:
        """The per-layer directions from the three pools (after the disjointness rule), into `tmp`."""
        start = time.perf_counter()
        rng = random.Random(self.seed)
        pools = {"pseudo_harmful": self.pseudo_harmful, "harmful": self.harmful, "harmless": self.harmless}
        means, summary = {}, {"overlap": {}}
        for role, name in pools.items():
            texts = [p.text for p in load_prompts(name)]
            size = self.harmless_size if role == "harmless" else self.pool_size
            if size is not None and len(texts) > size:
                texts = [texts[i] for i in sorted(rng.sample(range(len(texts)), size))]
            overlap = check_disjoint(run, texts, name)
            texts = [texts[i] for i in overlap.pop("kept_indices")]
            summary["overlap"][role] = overlap
            rows = [encode(run.lm.chat, t).input_ids for t in texts]
            states = hidden_states(
                run.lm.model, rows, [[-1]] * len(rows), range(run.num_layers), run.cfg.classify.batch_size,
                f"false-refusal states ({role})",
            )  # fmt: skip
            means[role] = states[:, 0].mean(0)  # (L, D)
        false_refusal = means["pseudo_harmful"] - means["harmless"]
        refusal = means["harmful"] - means["harmless"]
        directions = torch.stack(
            [orthogonalise(false_refusal[layer], refusal[layer], self.coefficient) for layer in range(len(refusal))]
        )
        summary["seconds"] = time.perf_counter() - start
        summary["cosine_before"] = [
            float(torch.cosine_similarity(false_refusal[i], refusal[i], dim=0)) for i in range(len(refusal))
        ]
        save_tensors(tmp / DIRECTIONS, {"directions": directions})
        return summary

    def directions(self, run) -> torch.Tensor:
        path = run.artifact("prepared", method=self, part=DIRECTIONS_PART).path
        return load_tensors(path / DIRECTIONS)["directions"]

    def choose_layer(self, run) -> int:
        """The candidate layer with the least validation benign refusal within the harmful-refusal cap (cached)."""
        return int(run.artifact("prepared", method=self, part=LAYER_PART).summary["layer"])

    def _choose(self, run) -> dict:
        candidates = self.candidate_layers or tuple(parse_layers(f"0-{run.num_layers - 1}", run.num_layers, "layers"))
        record = choose_on_validation(
            run, [({"layer": layer}, replace(self, layer=layer)) for layer in candidates], "false-refusal ablation"
        )
        return {"layer": record.pop("choice")["layer"], **record}

    def intervention(self, run) -> Ablation:
        return Ablation(self.directions(run)[self.layer])
