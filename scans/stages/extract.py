"""Stage `extract`: refusal vectors (Eq. 1) and the harm direction (Eq. 3) from the anchor prompts."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from scans.artifacts import load_tensors, save_tensors, write_jsonl
from scans.stages.context import Run
from scans.stages.producers import produces
from scans.steering import harm_reference
from scans.steering.classifier import HarmReference
from scans.steering.vectors import steering_vectors

log = logging.getLogger(__name__)
STAGE = "extract"
VECTORS = "vectors.safetensors"


def reference(r: Run, harmful: Sequence[str], benign: Sequence[str]) -> HarmReference:
    """Eqs. 1 and 3 of two prompt lists as this stage computes them (also `scans.api`): the raw mean difference
    (made unit-norm when loaded, by `steering_vectors`) and the harm direction, with `classify`'s batch and response."""
    c = r.cfg.classify
    return harm_reference(
        r.lm.model,
        r.lm.chat,
        list(harmful),
        list(benign),
        batch_size=c.batch_size,
        normalize=False,
        response=c.response,
    )


def _key(r: Run) -> str:
    return r.extract_key


def _load(r: Run, path: Path) -> dict[str, torch.Tensor]:
    """{"refusal_vectors" (unit-norm per layer unless steer.normalize=false), "harm_direction", "mean_difference"}."""
    t = load_tensors(path / VECTORS)
    v = steering_vectors(t["mean_difference"], r.cfg.steer.normalize)
    return {"refusal_vectors": v, "harm_direction": t["harm_direction"], "mean_difference": t["mean_difference"]}


@produces("vectors", STAGE, _key, _load)
def build(r: Run, tmp: Path) -> dict:
    a = r.anchors
    ref = reference(r, [p.text for p in a.harmful_anchors], [p.text for p in a.benign_anchors])
    provenance = {
        "model": r.model_identity,
        "model_name": r.model_name,
        "anchors": r.anchor_inputs,
        "response": r.cfg.classify.response,
        "site": "output of decoder layer l (HF hidden_states[l + 1] before any final norm)",
        "num_layers": int(ref.vectors.shape[0]),
        "hidden_size": int(ref.vectors.shape[1]),
    }
    save_tensors(
        tmp / VECTORS,
        {"mean_difference": ref.vectors, "harm_direction": ref.direction},
        {"equations": "mean_difference: Eq. 1 (raw); harm_direction: Eq. 3"},
    )
    write_jsonl(
        tmp / "anchors.jsonl",
        [{"role": "harmful", "text": p.text} for p in a.harmful_anchors]
        + [{"role": "benign", "text": p.text} for p in a.benign_anchors],
    )
    return provenance


def run(r: Run) -> dict[str, torch.Tensor]:
    return r.artifact("vectors")


load = run
