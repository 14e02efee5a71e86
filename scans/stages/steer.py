"""Stage `steer`: responses of the Default model and of SCANS on every evaluation set, as JSONL.

Each SCANS row records its harm similarity s_q (Eq. 4) and sign σ(q) (Eq. 5); the Default rows are unsteered.
"""

from __future__ import annotations

import logging

from scans.artifacts import read_jsonl, stable_hash, write_jsonl
from scans.data import Prompt
from scans.models import encode
from scans.stages import classify, extract
from scans.stages.context import Run, prompts_hash
from scans.steering import DecodingConfig, Steering, generate, harm_similarity, steer_sign

log = logging.getLogger(__name__)
STAGE = "responses"
RESPONSES = "responses.jsonl"
DEFAULT, SCANS = "Default", "SCANS"


def settings(r: Run, method: str) -> dict:
    """Every input that changes a method's responses."""
    base = {"model": r.model_identity, "generation": r.config_dict("generation")["generation"]}
    if method == DEFAULT:
        return base
    return {
        **base,
        "extract": r.extract_key,
        "alpha": float(r.cfg.steer.alpha),
        "steer_layers": r.steer_layers,
        "positions": r.cfg.steer.positions,
        "normalize": bool(r.cfg.steer.normalize),
        "classify_layers": r.classify_layers,
        "threshold": float(r.cfg.classify.threshold),
        "response": r.cfg.classify.response,
    }


def key(r: Run, method: str, name: str, prompts: list[Prompt]) -> str:
    return f"{name}-{method.lower()}-{stable_hash({'settings': settings(r, method), 'prompts': prompts_hash(prompts)})}"


def methods(r: Run) -> list[str]:
    return [DEFAULT, SCANS]


def run(r: Run) -> None:
    g = r.cfg.generation
    decoding = DecodingConfig(g.max_new_tokens, g.repetition_penalty, g.batch_size)
    for method in methods(r):
        for name, prompts in r.eval_sets.items():
            k = key(r, method, name, prompts)
            if r.store.is_complete(r.model_name, STAGE, k):
                log.info("steer: reusing %s / %s", method, name)
                continue
            encoded = [encode(r.lm.chat, p.text) for p in prompts]
            sims = signs = None
            spec = None
            if method == SCANS:
                sims = harm_similarity(classify.load(r, name, prompts), r.classify_layers)
                signs = steer_sign(sims, float(r.cfg.classify.threshold))
                vectors = extract.load(r)["refusal_vectors"]
                spec = Steering(vectors, r.steer_layers, float(r.cfg.steer.alpha), r.cfg.steer.positions)
            responses = generate(r.lm.model, r.lm.tokenizer, encoded, decoding, spec, signs, f"{method} {name}")
            rows = [
                {
                    "eval_set": name,
                    "prompt": p.text,
                    "label": p.label,
                    "similarity": None if sims is None else float(sims[i]),
                    "sign": None if signs is None else int(signs[i]),
                    "response": responses[i],
                }
                for i, p in enumerate(prompts)
            ]
            provenance = {"method": method, "eval_set": name, "n": len(prompts), "settings": settings(r, method)}
            with r.store.writing(r.model_name, STAGE, k, provenance) as tmp:
                write_jsonl(tmp / RESPONSES, rows)
            log.info("steer: %s / %s done (%d responses)", method, name, len(rows))


def load(r: Run, method: str, name: str, prompts: list[Prompt]) -> tuple[str, list[dict]]:
    k = key(r, method, name, prompts)
    path = r.store.require(r.model_name, STAGE, k, "python -m scans stage=steer")
    return k, read_jsonl(path / RESPONSES)
