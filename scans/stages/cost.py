"""Stage `cost`: Table 4, tokens/s and peak memory of Default and the headline SCANS row at each batch size.

The prompts are WikiText-2 test passages (the paper's setting), chat-wrapped as queries; every row generates
exactly `max_new_tokens` tokens. SCANS's σ(q) pass is timed on its own and reported beside the generation figures.
The measurement is stored with the device it ran on and reused on reruns; `make bench` always measures afresh.
"""

from __future__ import annotations

import logging
import os
import platform

import torch
from omegaconf import OmegaConf

from scans.artifacts import read_json, stable_hash, write_json
from scans.capability.cost import ScansSpec, measure, signs_for
from scans.data import load_table
from scans.models import encode
from scans.models.chat import tokenize
from scans.models.loading import resolve_device
from scans.stages import extract, steer
from scans.stages.context import Run
from scans.steering import DecodingConfig, Steering, generate

log = logging.getLogger(__name__)
STAGE = "cost"
RESULT = "cost.json"


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def queries(r: Run) -> list[str]:
    c = r.cfg.capability.cost
    tokens = tokenize(r.lm.tokenizer, "\n\n".join(t for t in load_table("wikitext2")["text"] if t.strip()))
    n = c.prompt_tokens
    return [r.lm.tokenizer.decode(tokens[i * n : (i + 1) * n]).strip() for i in range(c.prompts)]


def scans_spec(r: Run, method: steer.Method) -> ScansSpec:
    ref = extract.load(r)
    return ScansSpec(
        ref["harm_direction"],
        ref["refusal_vectors"],
        method.classify_layers,
        method.threshold,
        Steering(ref["refusal_vectors"], method.steer_layers, method.alpha, r.cfg.steer.positions),
        r.cfg.classify.response,
    )


def measure_method(r: Run, method: steer.Method, prompts: list[str], batch: int) -> dict:
    c = r.cfg.capability.cost
    lm = r.lm
    dec = DecodingConfig(c.max_new_tokens, r.cfg.generation.repetition_penalty, batch, min_new_tokens=c.max_new_tokens)
    encoded = [encode(lm.chat, q) for q in prompts]
    generate(lm.model, lm.tokenizer, encoded[:batch], DecodingConfig(2, 1.1, batch))  # warm-up
    spec = signs = None
    classify_s = 0.0
    peak = 0.0
    if method.steered:
        spec = scans_spec(r, method)
        holder: dict = {}
        m = measure(lambda: holder.update(s=signs_for(lm.model, lm.chat, prompts, spec, batch)), lm.device)
        signs, classify_s, peak = holder["s"], m.seconds, m.peak_mem_mb
    m = measure(
        lambda: generate(lm.model, lm.tokenizer, encoded, dec, spec.steer if spec else None, signs), lm.device
    )
    tokens = len(prompts) * c.max_new_tokens
    return {
        "model": r.model_name,
        "method": method.name,
        "batch": batch,
        "tokens_per_s": tokens / m.seconds,
        "peak_mem_mb": max(peak, m.peak_mem_mb),
        "classify_s": classify_s,
        "end_to_end_tokens_per_s": tokens / (m.seconds + classify_s),
    }


def key(r: Run) -> str:
    c = OmegaConf.to_container(r.cfg.capability.cost, resolve=True)
    methods = [steer.method_settings(r, m) for m in (steer.Method(steer.DEFAULT), steer.headline(r))]
    where = {"device": device_name(resolve_device(r.cfg.model.device)), "cpus": os.cpu_count(), "host": platform.node()}
    return stable_hash({"config": c, "methods": methods, "where": where})


def run(r: Run) -> dict:
    k = key(r)
    if r.store.is_complete(r.model_name, STAGE, k):
        return read_json(r.store.path(r.model_name, STAGE, k) / RESULT)
    r.release_other_models()  # a peak of this model alone, whichever stages ran before in this process
    prompts = queries(r)
    rows = []
    for batch in r.cfg.capability.cost.batch_sizes:
        for method in (steer.Method(steer.DEFAULT), steer.headline(r)):
            rows.append(measure_method(r, method, prompts, batch))
            log.info("cost: %s", rows[-1])
    result = {"device": device_name(r.lm.device), "prompts": len(prompts), "rows": rows}
    with r.store.writing(r.model_name, STAGE, k, result) as tmp:
        write_json(tmp / RESULT, result)
    return result
