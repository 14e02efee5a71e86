"""AdaSteer (Zhao et al., EMNLP 2025; MuyuenLP/AdaSteer), a successor row: input-adaptive steering coefficients.

- **Directions**, from training pools (harmful prompts and Alpaca, cleared by the disjointness rule), the last prompt
  token's state of every layer, and the model's own greedy answers judged by `judge.fit`:
  the rejection direction RD = mean(refused) − mean(answered); the harmfulness direction HD = mean(harmful) −
  mean(benign).
- **Coordinates** of a query, from its unsteered prompt: t on RD at the rejection layer and s on HD at the harmfulness
  layer, each 0 at the first mean and 1 at the second (t = (h − μ_answered)·RD/‖RD‖²; the release's scale is 100).
- **Maps** (the paper's logistic regressions, fitted on validation): g(s) = P(harmful | s) on the validation split's
  labels, q(t) = P(refused | t) on Default's judged answers to the validation generation subset.
- **Coefficient** along the unit RD of each steering layer: λ = α_r·g(s)·(1 − q(t)) − α_c·(1 − g(s))·q(t): the
  rejection law (a harmful-looking query not yet refused is pushed to refuse) and the harmfulness law (a
  benign-looking query that would be refused is pushed to answer). Both terms move the state along RD, as the
  release's do. α_r and α_c are chosen on validation by the tune stage's rule.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from scans.artifacts import load_tensors, save_tensors, stable_hash
from scans.data import HARMFUL
from scans.errors import ModelError
from scans.judge import get_judge
from scans.methods.base import Method, layer_spec
from scans.methods.default import Default
from scans.methods.fitted import choose_on_validation, fit_key
from scans.methods.pools import PoolSpec, draw_pools, layer_at, prompt_states, query_states
from scans.models import encode
from scans.steering import DecodingConfig, Steering, generate

TENSORS = "directions.safetensors"
FIT, MAPS, STRENGTH = "directions", "maps", "strength"


def coordinate(states: torch.Tensor, low: torch.Tensor, high: torch.Tensor) -> torch.Tensor:
    """Where states (N, D) lie between two means: 0 at `low`, 1 at `high`, along high − low."""
    d = (high - low).double()
    return ((states.double() - low.double()) @ d / (d @ d)).float()


def adaptive_coefficient(g: torch.Tensor, q: torch.Tensor, alpha_reject: float, alpha_comply: float) -> torch.Tensor:
    """λ per query from P(harmful) g and P(refused) q."""
    return alpha_reject * g * (1 - q) - alpha_comply * (1 - g) * q


@dataclass(frozen=True)
class LogisticMap:
    """p(x) = 1 / (1 + exp(−(w·x + b))), one feature."""

    w: float
    b: float

    @classmethod
    def fit(cls, x: np.ndarray, y: np.ndarray, what: str) -> LogisticMap:
        if len(set(y.tolist())) < 2:
            raise ModelError(f"AdaSteer: the {what} map needs both outcomes on validation; every prompt gave {y[0]}")
        m = LogisticRegression(max_iter=1000).fit(x[:, None], y)
        return cls(float(m.coef_[0, 0]), float(m.intercept_[0]))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.w * x + self.b)


@dataclass(frozen=True)
class AdaSteer(Method):
    harmful: tuple = ("harmfulq", "harmbench", "tdc2023")
    benign: tuple = ("alpaca",)
    pool_size: int = 192  # prompts per side, drawn before the rule
    answer_tokens: int = 32
    rejection_depth: float = 0.25  # t's layer as a fraction of depth (Llama-3.1-8B: 8 of 32)
    harm_depth: float = 0.40  # s's layer (13 of 32)
    steer_layers: object = None  # the steered layers (None: the model's middle, `model.hparams.steer_layers`)
    alpha_reject: float | None = None  # None: α_r and α_c chosen on validation among `alphas`
    alpha_comply: float | None = None
    alphas: tuple = (4.0, 8.0, 12.0, 16.0)  # α_c's grid
    reject_alphas: tuple = (0.0, 8.0)  # α_r's grid
    positions: str = "from_instruction_end"
    seed: int = 0

    def __post_init__(self):
        for f in ("harmful", "benign"):
            object.__setattr__(self, f, PoolSpec.of(getattr(self, f)).sources)
        object.__setattr__(self, "steer_layers", layer_spec(self.steer_layers))
        for f in ("alphas", "reject_alphas"):
            object.__setattr__(self, f, tuple(float(a) for a in getattr(self, f)))

    def key(self, run) -> str:
        leave = ("steer_layers", "alpha_reject", "alpha_comply", "alphas", "reject_alphas", "positions")
        answers = {"judge": run.fit_judge_identity, "generation": run.decoding_identity}
        return fit_key(run, self, [*self.harmful, *self.benign], leave, answers)

    def layers(self, run) -> tuple[int, int]:
        return layer_at(self.rejection_depth, run.num_layers), layer_at(self.harm_depth, run.num_layers)

    def resolve(self, run) -> AdaSteer:
        layers = self.steer_layers
        if not isinstance(layers, tuple):
            layers = tuple(run.layers_of(run.cfg.model.hparams.steer_layers if layers is None else layers))
        out = replace(self, steer_layers=layers)
        if self.alpha_reject is None or self.alpha_comply is None:
            c = run.artifact("prepared", method=out, part=STRENGTH).summary["choice"]
            out = replace(out, alpha_reject=c["alpha_reject"], alpha_comply=c["alpha_comply"])
            object.__setattr__(out, "_chosen", True)  # not a setting: its strengths came from the validation choice
        return out

    def upstream(self, run) -> dict:
        return {"directions": self.key(run), "maps": self.artifact_key(run, MAPS)}

    def artifact_key(self, run, part: str) -> str:
        if part == FIT:
            return f"adasteer-{self.key(run)}"
        inputs = [self.key(run), run.key("tuned")]
        if part == STRENGTH:
            inputs += [self.alphas, self.reject_alphas, self.steer_layers, self.positions]
        return f"adasteer-{part}-{stable_hash(inputs)}"

    def build_artifact(self, run, tmp: Path, part: str) -> dict:
        return {FIT: self._fit, MAPS: self._maps, STRENGTH: self._strength}[part](run, tmp)

    def prepare(self, run) -> dict:
        summary = run.artifact("prepared", method=self, part=FIT).summary
        out = {**summary, "maps": run.artifact("prepared", method=self, part=MAPS).summary}
        if getattr(self, "_chosen", False):  # its strengths were chosen on validation: the record
            strength = run.artifact("prepared", method=self, part=STRENGTH).summary
            out.update(strength=strength, choice_seconds=strength["seconds"])
        return out

    def _fit(self, run, tmp: Path) -> dict:
        """The means of every layer's last-token states by label and by the model's own outcome."""
        start = time.perf_counter()
        sides = {"harmful": PoolSpec(self.harmful, self.pool_size), "benign": PoolSpec(self.benign, self.pool_size)}
        pools, overlap = draw_pools(run, sides, self.seed, "AdaSteer")
        texts = pools["harmful"] + pools["benign"]
        harmful = torch.tensor([True] * len(pools["harmful"]) + [False] * len(pools["benign"]))
        lm = run.lm
        dec = DecodingConfig(self.answer_tokens, run.cfg.generation.repetition_penalty, run.cfg.generation.batch_size)
        answers = generate(lm.model, lm.tokenizer, [encode(lm.chat, t) for t in texts], dec, desc="AdaSteer answers")
        judge = get_judge(run.cfg.judge.fit)
        refused = torch.tensor([bool(judge(a)) for a in answers])
        if refused.all() or not refused.any():
            raise ModelError("AdaSteer: the rejection direction needs refused and answered pool prompts")
        states = prompt_states(run, texts, range(run.num_layers), "AdaSteer states")  # (N, L, D)
        means = {
            "refused": states[refused].mean(0), "answered": states[~refused].mean(0),
            "harmful": states[harmful].mean(0), "benign": states[~harmful].mean(0),
        }  # fmt: skip
        save_tensors(tmp / TENSORS, means)
        rates = {role: float(refused[harmful if role == "harmful" else ~harmful].float().mean()) for role in pools}
        return {"prompts": {k: len(v) for k, v in pools.items()}, "refusal_rate": rates, "overlap": overlap,
                "seconds": time.perf_counter() - start}  # fmt: skip

    def means(self, run) -> dict[str, torch.Tensor]:
        return load_tensors(run.artifact("prepared", method=self, part=FIT).path / TENSORS)

    def coordinates(self, run, prompts, name) -> tuple[torch.Tensor, torch.Tensor]:
        """(t, s) per query from its unsteered prompt."""
        lr, lh = self.layers(run)
        states = query_states(run, prompts, name, (lr, lh))
        m = self.means(run)
        return (coordinate(states[:, 0], m["answered"][lr], m["refused"][lr]),
                coordinate(states[:, 1], m["benign"][lh], m["harmful"][lh]))  # fmt: skip

    def _maps(self, run, tmp: Path) -> dict:
        """g(s) on the whole validation split's labels; q(t) on Default's judged validation answers."""
        split = [p for ps in run.artifact("validation_split").values() for p in ps]
        _, s = self.coordinates(run, split, "validation-split")
        g = LogisticMap.fit(s.numpy(), np.array([p.label == HARMFUL for p in split]), "harmfulness")
        subset = run.artifact("validation_subset")
        flags = run.artifact("validation_flags", method=Default())
        prompts = [p for lab in subset for p in subset[lab]]
        t, _ = self.coordinates(run, prompts, "validation-subset")
        q = LogisticMap.fit(t.numpy(), np.concatenate([np.asarray(flags[lab]) for lab in subset]), "rejection")
        return {"g": [g.w, g.b], "q": [q.w, q.b], "split": len(split), "subset": len(prompts)}

    def probabilities(self, run, prompts, name) -> tuple[torch.Tensor, torch.Tensor]:
        maps = run.artifact("prepared", method=self, part=MAPS).summary
        t, s = self.coordinates(run, prompts, name)
        return LogisticMap(*maps["g"])(s), LogisticMap(*maps["q"])(t)

    def _strength(self, run, tmp: Path) -> dict:
        grid = [({"alpha_reject": r, "alpha_comply": c}, replace(self, alpha_reject=r, alpha_comply=c))
                for r in self.reject_alphas for c in self.alphas]  # fmt: skip
        return choose_on_validation(run, grid, "AdaSteer")

    def coefficients(self, run, prompts, name) -> torch.Tensor:
        g, q = self.probabilities(run, prompts, name)
        return adaptive_coefficient(g, q, float(self.alpha_reject), float(self.alpha_comply))

    def intervention(self, run) -> Steering:
        m = self.means(run)
        rd = m["refused"] - m["answered"]
        unit = rd / rd.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return Steering(unit, self.steer_layers, 1.0, self.positions)
