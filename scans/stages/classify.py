"""Stage `classify`: per-layer cosine of every evaluation prompt's transition with the harm direction (Eqs. 2-4).

All layers are stored, so a change of 𝓛 or 𝒯 (a sweep) reuses them without a forward pass.
"""

from __future__ import annotations

import logging

import torch

from scans.artifacts import load_tensors, save_tensors, stable_hash, write_jsonl
from scans.data import Prompt
from scans.stages import extract
from scans.stages.context import Run, prompts_hash
from scans.steering import classify

log = logging.getLogger(__name__)
STAGE = "classify"
SIMS = "layer_similarities.safetensors"


def key(r: Run, name: str, prompts: list[Prompt]) -> str:
    return f"{name}-{stable_hash({'extract': r.extract_key, 'prompts': prompts_hash(prompts)})}"


def similarities(r: Run, name: str, prompts: list[Prompt]) -> torch.Tensor:
    """(N, L) per-layer similarities of one set, computed once and then read from their artifact."""
    k = key(r, name, prompts)
    path = r.store.path(r.model_name, STAGE, k)
    if r.store.is_complete(r.model_name, STAGE, k):
        return load_tensors(path / SIMS)["layer_similarities"]
    result = classify(
        r.lm.model,
        r.lm.chat,
        [p.text for p in prompts],
        extract.load(r)["harm_direction"],
        batch_size=r.cfg.classify.batch_size,
        response=r.cfg.classify.response,
        desc=f"classify {name}",
    )
    provenance = {"eval_set": name, "n": len(prompts), "extract_key": r.extract_key, "model_name": r.model_name}
    with r.store.writing(r.model_name, STAGE, k, provenance) as tmp:
        save_tensors(tmp / SIMS, {"layer_similarities": result.layer_similarities})
        write_jsonl(tmp / "prompts.jsonl", [{"text": p.text, "label": p.label} for p in prompts])
    log.info("classify: %s done (%d prompts)", name, len(prompts))
    return result.layer_similarities


def run(r: Run) -> None:
    for name, prompts in r.eval_sets.items():
        similarities(r, name, prompts)
