"""AlphaSteer (ICLR 2026; AlphaLab-USTC/AlphaSteer), a successor row: a steering matrix in the null space of benign
activations (the equations: `scans.steering.nullspace`).

Per steered layer, from the last prompt token's states of training pools cleared by the disjointness rule (Alpaca for
the benign null space; harmful training sets and HarmfulQ for the harmful side): the null-space projector of the
benign states, the refusal vector r = mean(harmful) − mean(benign) of the pools (unnormalised, as the release's),
and the ridge solution that maps harmful states to r. A prompt is steered by α·(h·u)·r at every prompt position,
during the prompt's pass only. α is chosen on validation by the tune stage's rule.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from scans.artifacts import load_tensors, save_tensors, stable_hash
from scans.methods.base import Intervention, Method, layer_spec
from scans.methods.fitted import choose_on_validation, fit_key
from scans.methods.pools import PoolSpec, draw_pools, prompt_states
from scans.steering.nullspace import null_space_projector, null_space_steering, steering_gate

TENSORS = "steering.safetensors"
FIT, STRENGTH = "matrices", "strength"


@dataclass(frozen=True, eq=False)
class NullSpaceSteering(Intervention):
    gates: torch.Tensor
    vectors: torch.Tensor
    layers: tuple[int, ...]
    alpha: float

    @contextmanager
    def active(self, model, rows) -> Iterator:
        reads = torch.tensor([r.eoi_index for r in rows], dtype=torch.long)
        with null_space_steering(model, self.gates, self.vectors, self.layers, self.alpha, reads) as state:
            yield state

    def untouched_prefix(self, rows) -> int:
        return 0  # every prompt position is steered

    def compactable(self) -> bool:
        return True  # its per-row state acts on the prompt's pass only; `active` yields the rows' state


@dataclass(frozen=True)
class AlphaSteer(Method):
    benign: object = ("alpaca",)
    benign_size: int = 1500  # more than the hidden size, so that the null space is the benign states' own
    harmful: object = ("harmfulq", "harmbench", "tdc2023")
    harmful_size: int = 600
    layers: object = None  # None: the model's middle layers (`model.hparams.steer_layers`)
    null_ratio: float = 0.6  # share of the dimensions kept as the null space (the release: 0.3-0.6, mostly 0.6)
    ridge: float = 10.0
    alpha: float | None = None  # None: chosen on validation among `alphas`
    alphas: tuple = (0.25, 0.5, 1.0)
    seed: int = 0

    def __post_init__(self):
        for f in ("harmful", "benign"):
            object.__setattr__(self, f, PoolSpec.of(getattr(self, f)).sources)
        object.__setattr__(self, "layers", layer_spec(self.layers))
        object.__setattr__(self, "alphas", tuple(float(a) for a in self.alphas))

    def key(self, run) -> str:
        return fit_key(run, self, [*self.benign, *self.harmful], ("alpha", "alphas"))

    def resolve(self, run) -> AlphaSteer:
        layers = self.layers
        if not isinstance(layers, tuple):
            layers = tuple(run.layers_of(run.cfg.model.hparams.steer_layers if layers is None else layers))
        out = replace(self, layers=layers)
        if self.alpha is None:
            out = replace(out, alpha=float(run.artifact("prepared", method=out, part=STRENGTH).summary["alpha"]))
            object.__setattr__(out, "_chosen", True)  # not a setting: α came from the validation choice
        return out

    def upstream(self, run) -> dict:
        return {"matrices": self.key(run)}

    def artifact_key(self, run, part: str) -> str:
        if part == FIT:
            return f"alphasteer-{self.key(run)}"
        return f"alphasteer-alpha-{stable_hash([self.key(run), self.alphas, run.key('tuned')])}"

    def build_artifact(self, run, tmp: Path, part: str) -> dict:
        if part == FIT:
            return self._fit(run, tmp)
        grid = [({"alpha": a}, replace(self, alpha=a)) for a in self.alphas]
        record = choose_on_validation(run, grid, "AlphaSteer")
        return {"alpha": record.pop("choice")["alpha"], **record}

    def prepare(self, run) -> dict:
        summary = run.artifact("prepared", method=self, part=FIT).summary
        if getattr(self, "_chosen", False):
            strength = run.artifact("prepared", method=self, part=STRENGTH).summary
            summary = {**summary, "strength": strength, "choice_seconds": strength["seconds"]}
        return summary

    def _fit(self, run, tmp: Path) -> dict:
        """u and r of every steered layer (other layers' rows stay zero)."""
        start = time.perf_counter()
        sides = {
            "benign": PoolSpec(self.benign, self.benign_size),
            "harmful": PoolSpec(self.harmful, self.harmful_size),
        }
        pools, overlap = draw_pools(run, sides, self.seed, "AlphaSteer")
        benign, harmful = pools["benign"], pools["harmful"]
        layers = list(self.layers)
        hb = prompt_states(run, benign, layers, "AlphaSteer states (benign)")
        hh = prompt_states(run, harmful, layers, "AlphaSteer states (harmful)")
        d = hb.shape[-1]
        gates, vectors = torch.zeros(run.num_layers, d), torch.zeros(run.num_layers, d)
        benign_shift, harmful_shift = [], []
        for i, layer in enumerate(layers):
            p = null_space_projector(hb[:, i], self.null_ratio)
            u = steering_gate(hh[:, i], p, self.ridge)
            gates[layer] = u.float()
            vectors[layer] = hh[:, i].mean(0) - hb[:, i].mean(0)
            benign_shift.append(float((hb[:, i].double() @ u).abs().mean()))  # |h·u|: 0 steers nothing, 1 a full r
            harmful_shift.append(float((hh[:, i].double() @ u).mean()))
        save_tensors(tmp / TENSORS, {"gates": gates, "vectors": vectors})
        return {"prompts": {"benign": len(benign), "harmful": len(harmful)},
                "overlap": overlap,
                "gate_benign": benign_shift, "gate_harmful": harmful_shift,
                "seconds": time.perf_counter() - start}  # fmt: skip

    def intervention(self, run) -> NullSpaceSteering:
        t = load_tensors(run.artifact("prepared", method=self, part=FIT).path / TENSORS)
        return NullSpaceSteering(t["gates"], t["vectors"], self.layers, float(self.alpha))
