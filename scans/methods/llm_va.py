"""LLM-VA, vector alignment (ACL 2026; HotBento/LLM-VA), a successor row: a closed-form weight edit that makes the
answer/refuse direction follow the benign/harmful direction.

Each iteration, on a seeded sample of training prompts (harmful training sets and HarmfulQ against Alpaca, cleared by
the disjointness rule), answered by the model as edited so far and judged by `judge.fit`:

- linear SVM probes (no intercept) on every sublayer's output at the last prompt token (each layer's attention output
  projection and MLP down projection, 2L sublayers) and on the last layer's output: v_b separates benign (1) from
  harmful (0), v_a answered (1) from refused (0); each is the unit SVM weight, σ the spread of the training states'
  projections on it;
- the sublayers are ranked by (v_a·v_a^fin)·Acc_a + (v_b·v_b^fin)·Acc_b, accuracies on a held-out fifth of the
  sample, and the top `select` share is edited;
- the edit (Eq. 9): W' = W + v_a((σ_a/σ_b)·v_b − v_a)ᵀW for a sublayer y = Wx, so that the output's component along
  v_a becomes its benign component scaled, and nothing orthogonal to v_a changes.

The share of sublayers and the number of iterations are chosen on validation by the tune stage's rule.
"""

from __future__ import annotations

import random
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from sklearn.svm import LinearSVC

from scans.artifacts import load_tensors, save_tensors, stable_hash
from scans.errors import ModelError
from scans.judge import get_judge
from scans.methods.base import Intervention, Method
from scans.methods.fitted import choose_on_validation, fit_key
from scans.methods.pools import PoolSpec, draw_pools
from scans.models import decoder_layers, encode
from scans.steering import DecodingConfig, generate, last_token_outputs

TENSORS = "edits.safetensors"
FIT, CHOICE = "edits", "choice"
KINDS = ("attn", "mlp")


def sublayer(model, layer: int, kind: str) -> torch.nn.Linear:
    block = decoder_layers(model)[layer]
    return block.self_attn.o_proj if kind == "attn" else block.mlp.down_proj


def aligned_weight(weight: torch.Tensor, v_a: torch.Tensor, v_b: torch.Tensor, ratio: float) -> torch.Tensor:
    """Eq. 9 for a linear map y = Wx (W: (D, ·), the residual stream on its rows): W + v_a((ratio)·v_b − v_a)ᵀW."""
    w = weight.float()
    return w + torch.outer(v_a, ratio * v_b - v_a) @ w


@dataclass(frozen=True)
class Edit:
    layer: int
    kind: str
    v_a: torch.Tensor
    v_b: torch.Tensor
    ratio: float  # σ_a / σ_b


@contextmanager
def edited(model, edits: Sequence[Edit]) -> Iterator[None]:
    """The model with the edits applied in order; its weights restored on exit."""
    saved = {}
    try:
        with torch.no_grad():
            for e in edits:
                w = sublayer(model, e.layer, e.kind).weight
                saved.setdefault(id(w), (w, w.detach().clone()))
                w.copy_(aligned_weight(w, e.v_a.to(w.device), e.v_b.to(w.device), e.ratio).to(w.dtype))
        yield
    finally:
        with torch.no_grad():
            for w, original in saved.values():
                w.copy_(original)


@dataclass(frozen=True, eq=False)
class WeightEdits(Intervention):
    edits: tuple[Edit, ...]

    @contextmanager
    def active(self, model, rows):
        with edited(model, self.edits):
            yield

    def compactable(self) -> bool:
        return True  # a weight edit, the same for every row


def probe(x: torch.Tensor, y: np.ndarray, train: np.ndarray) -> tuple[torch.Tensor, float, float]:
    """(unit direction, σ of the training projections, held-out accuracy) of a linear SVM without intercept."""
    svm = LinearSVC(fit_intercept=False, max_iter=2000).fit(x[train].numpy(), y[train])
    v = torch.tensor(svm.coef_[0], dtype=torch.float32)
    v = v / v.norm().clamp_min(1e-12)
    held = ~train
    accuracy = float((svm.predict(x[held].numpy()) == y[held]).mean()) if held.any() else float("nan")
    return v, float((x[train] @ v).std()), accuracy


@dataclass(frozen=True)
class LlmVa(Method):
    harmful: tuple = ("harmfulq", "harmbench", "tdc2023")
    benign: tuple = ("alpaca",)
    pool_size: int = 400  # prompts per side, drawn before the rule
    per_iteration: int = 160  # prompts per side each iteration: four fifths train the probes, a fifth scores them
    answer_tokens: int = 32
    select: float | None = None  # share of the 2L sublayers edited; None: chosen on validation among `selects`
    iterations: int | None = None  # None: chosen on validation, up to `max_iterations`
    selects: tuple = (0.33, 0.67)
    max_iterations: int = 2
    seed: int = 0

    def __post_init__(self):
        for f in ("harmful", "benign"):
            object.__setattr__(self, f, PoolSpec.of(getattr(self, f)).sources)
        object.__setattr__(self, "selects", tuple(float(s) for s in self.selects))

    def key(self, run) -> str:
        answers = {"judge": run.fit_judge_identity, "generation": run.decoding_identity}
        return fit_key(run, self, [*self.harmful, *self.benign], ("select", "iterations"), answers)

    def resolve(self, run) -> LlmVa:
        if self.select is not None and self.iterations is not None:
            return self
        c = run.artifact("prepared", method=self, part=CHOICE).summary["choice"]
        out = replace(self, select=float(c["select"]), iterations=int(c["iterations"]))
        object.__setattr__(out, "_chosen", True)  # not a setting: they came from the validation choice
        return out

    def upstream(self, run) -> dict:
        return {"edits": self.key(run)}

    def artifact_key(self, run, part: str) -> str:
        if part == FIT:
            return f"llm-va-{self.key(run)}"
        return f"llm-va-choice-{stable_hash([self.key(run), run.key('tuned')])}"

    def build_artifact(self, run, tmp: Path, part: str) -> dict:
        if part == FIT:
            return self._fit(run, tmp)
        grid = [({"select": s, "iterations": k}, replace(self, select=s, iterations=k))
                for s in self.selects for k in range(1, self.max_iterations + 1)]  # fmt: skip
        return choose_on_validation(run, grid, "LLM-VA")

    def prepare(self, run) -> dict:
        summary = run.artifact("prepared", method=self, part=FIT).summary
        if getattr(self, "_chosen", False):
            choice = run.artifact("prepared", method=self, part=CHOICE).summary
            summary = {**summary, "choice": choice, "choice_seconds": choice["seconds"]}
        return summary

    def _fit(self, run, tmp: Path) -> dict:
        """Every candidate's edits: for each share of sublayers, `max_iterations` iterations in sequence."""
        start = time.perf_counter()
        sides = {"harmful": PoolSpec(self.harmful, self.pool_size), "benign": PoolSpec(self.benign, self.pool_size)}
        pools, overlap = draw_pools(run, sides, self.seed, "LLM-VA")
        tensors, record, first = {}, {}, None
        for s in self.selects:
            edits: list[Edit] = []
            record[str(s)] = []
            for k in range(1, self.max_iterations + 1):
                if k == 1 and first is not None:
                    sample = first  # the unedited model's probes are the same for every share
                else:
                    sample = self._probes(run, pools, edits, k)
                    first = sample if k == 1 else first
                chosen = sorted(sample["scores"], key=lambda c: -c[0])[: max(1, round(s * len(sample["scores"])))]
                for _, layer, kind in chosen:
                    p = sample["probes"][layer, kind]
                    edits.append(Edit(layer, kind, p["v_a"], p["v_b"], p["sigma_a"] / p["sigma_b"]))
                for j in range(len(edits) - len(chosen), len(edits)):  # the j-th edit of this share's sequence
                    # copies: the first iteration's probes are shared by every share's sequence
                    tensors[f"{s}/{j}/v_a"], tensors[f"{s}/{j}/v_b"] = edits[j].v_a.clone(), edits[j].v_b.clone()
                record[str(s)].append({
                    "iteration": k, "answered": sample["answered"],
                    "edits": [[e.layer, e.kind, e.ratio] for e in edits],
                })  # fmt: skip
        save_tensors(tmp / TENSORS, tensors)
        return {"prompts": {k: len(v) for k, v in pools.items()}, "overlap": overlap, "candidates": record,
                "seconds": time.perf_counter() - start}  # fmt: skip

    def _probes(self, run, pools: dict, edits: list[Edit], k: int) -> dict:
        """One iteration's sample, answered and read with `edits` applied, and every sublayer's probes."""
        rng = random.Random(self.seed * 1000 + k)
        texts, benign = [], []
        for role, prompts in pools.items():
            drawn = prompts if len(prompts) <= self.per_iteration else rng.sample(prompts, self.per_iteration)
            texts += drawn
            benign += [role == "benign"] * len(drawn)
        lm = run.lm
        encoded = [encode(lm.chat, t) for t in texts]
        dec = DecodingConfig(self.answer_tokens, run.cfg.generation.repetition_penalty, run.cfg.generation.batch_size)
        iv = WeightEdits(tuple(edits))
        answers = generate(lm.model, lm.tokenizer, encoded, dec, desc=f"LLM-VA answers ({k})", intervention=iv)
        judge = get_judge(run.cfg.judge.fit)
        answered = np.array([not judge(a) for a in answers], dtype=int)
        y_b = np.array(benign, dtype=int)
        if len(set(answered.tolist())) < 2:
            raise ModelError(f"LLM-VA: iteration {k} needs answered and refused prompts; all gave {answered[0]}")
        n = run.num_layers
        modules = {f"{kind}{layer}": sublayer(lm.model, layer, kind) for layer in range(n) for kind in KINDS}
        modules["final"] = decoder_layers(lm.model)[n - 1]
        with edited(lm.model, edits):
            states = last_token_outputs(
                lm.model, [e.input_ids for e in encoded], modules, int(run.cfg.classify.batch_size), "LLM-VA states"
            )
        train = np.array([random.Random(self.seed + i).random() < 0.8 for i in range(len(texts))])
        fin = {lab: probe(states["final"], y, train)[0] for lab, y in (("a", answered), ("b", y_b))}
        probes, scores = {}, []
        for layer in range(n):
            for kind in KINDS:
                x = states[f"{kind}{layer}"]
                v_a, sigma_a, acc_a = probe(x, answered, train)
                v_b, sigma_b, acc_b = probe(x, y_b, train)
                probes[layer, kind] = {"v_a": v_a, "v_b": v_b, "sigma_a": sigma_a, "sigma_b": max(sigma_b, 1e-12)}
                scores.append((float(v_a @ fin["a"]) * acc_a + float(v_b @ fin["b"]) * acc_b, layer, kind))
        return {"probes": probes, "scores": scores, "answered": {
            "benign": float(answered[y_b == 1].mean()), "harmful": float(answered[y_b == 0].mean())}}  # fmt: skip

    def edits(self, run) -> tuple[Edit, ...]:
        """The chosen share's edits through the chosen iteration, in order."""
        built = run.artifact("prepared", method=self, part=FIT)
        t = load_tensors(built.path / TENSORS)
        specs = built.summary["candidates"][str(self.select)][self.iterations - 1]["edits"]
        return tuple(
            Edit(layer, kind, t[f"{self.select}/{j}/v_a"], t[f"{self.select}/{j}/v_b"], ratio)
            for j, (layer, kind, ratio) in enumerate(specs)
        )

    def intervention(self, run) -> WeightEdits:
        return WeightEdits(self.edits(run))
