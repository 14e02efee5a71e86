"""Stage `steer`: the responses of every method (`scans.methods.rows`) on every evaluation set, as JSONL.

Each response set is keyed by the model, the method's settings and upstream artifacts, the decoding, the prompts and
the per-query coefficients (for SCANS: the signs σ(q), so settings whose signs agree share one generation).
"""

from __future__ import annotations

import logging
from dataclasses import asdict

import torch
from omegaconf import open_dict

from scans import methods as methods_lib
from scans.artifacts import read_jsonl, stable_hash, write_jsonl
from scans.data import Prompt
from scans.methods import Default, Method
from scans.models import encode
from scans.stages.context import Run, prompts_hash
from scans.steering import DecodingConfig, generate

log = logging.getLogger(__name__)
STAGE = "responses"
RESPONSES = "responses.jsonl"


def decoding(r: Run, max_new_tokens: int | None = None) -> DecodingConfig:
    g = r.cfg.generation
    return DecodingConfig(max_new_tokens or g.max_new_tokens, g.repetition_penalty, g.batch_size)


def key(
    r: Run,
    method: Method,
    name: str,
    prompts: list[Prompt],
    coefficients: torch.Tensor | None = None,
    max_new_tokens: int | None = None,
) -> str:
    """The folder of one method's responses on one set. The folder name carries the method's type, not its label,
    so a sweep column equal to a Table 2 row shares its responses."""
    if coefficients is None:
        coefficients = method.coefficients(r, prompts, name)
    inputs = {
        "method": methods_lib.method_key(r, method, method.response_inputs(coefficients)),
        "decoding": asdict(decoding(r, max_new_tokens)),
        "prompts": prompts_hash(prompts),
    }
    return f"{name}-{type(method).__name__.lower()}-{stable_hash(inputs)}"


def respond(
    r: Run,
    method: Method,
    name: str,
    prompts: list[Prompt],
    coefficients: torch.Tensor | None = None,
    max_new_tokens: int | None = None,
) -> list[dict]:
    """The responses of one method on one set, generated once and then read from their artifact.

    `coefficients` may be passed when they are already at hand (the `tune` stage's validation subsets); otherwise
    the method computes them (SCANS: from the `classify` artifact of this set).
    """
    if coefficients is None:
        coefficients = method.coefficients(r, prompts, name)
    k = key(r, method, name, prompts, coefficients, max_new_tokens)
    if r.store.is_complete(r.model_name, STAGE, k):
        log.info("steer: reusing %s / %s", method.name, name)
        return read_jsonl(r.store.path(r.model_name, STAGE, k) / RESPONSES)
    intervention = methods_lib.intervention(r, method)
    encoded = [encode(r.lm.chat, p.text) for p in prompts]
    dec = decoding(r, max_new_tokens)
    responses = generate(
        r.lm.model, r.lm.tokenizer, encoded, dec, desc=f"{method.name} {name}",
        intervention=intervention, coefficients=coefficients,
    )  # fmt: skip
    rows = [
        {
            "eval_set": name,
            "prompt": p.text,
            "label": p.label,
            "coefficient": None if coefficients is None else float(coefficients[i]),
            "sign": None if coefficients is None else int(torch.sign(coefficients[i])),
            "response": responses[i],
        }
        for i, p in enumerate(prompts)
    ]
    provenance = {
        "method": method.name, "eval_set": name, "n": len(prompts), "settings": method.settings(),
        "upstream": method.upstream(r), "decoding": asdict(dec),
    }  # fmt: skip
    with r.store.writing(r.model_name, STAGE, k, provenance) as tmp:
        write_jsonl(tmp / RESPONSES, rows)
    log.info("steer: %s / %s done (%d responses)", method.name, name, len(rows))
    return rows


def base_run(r: Run) -> Run | None:
    """For the organism: the same run on its base model, whose Default responses show what alignment changed."""
    if r.cfg.model.source.kind != "organism":
        return None
    cfg = r.cfg.copy()
    with open_dict(cfg):
        cfg.model = r.cfg.model.base
        cfg.steer.tuned = False
        cfg.method = None
    return Run(cfg)


def run(r: Run) -> None:
    for method in methods_lib.rows(r):
        for name, prompts in r.eval_sets.items():
            respond(r, method, name, prompts)
    if (base := base_run(r)) is not None:
        for name, prompts in base.eval_sets.items():
            respond(base, Default(), name, prompts)


def load(r: Run, method: Method, name: str, prompts: list[Prompt]) -> tuple[str, list[dict]]:
    k = key(r, method, name, prompts)
    path = r.store.require(r.model_name, STAGE, k, "python -m scans stage=steer")
    return k, read_jsonl(path / RESPONSES)
