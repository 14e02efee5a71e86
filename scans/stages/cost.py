"""Stage `cost`: Table 4, tokens/s and peak memory of every row of Table 2 (Default first) at each batch size.

The prompts are WikiText-2 test passages (the paper's setting), chat-wrapped as queries; every row generates
exactly `max_new_tokens` tokens through the method's intervention, so Self-CD's second pass and SafeDecoding's
expert show in tokens/s and memory (the expert's weights are loaded before the measurement and count in the peak).
A method's per-query coefficients (SCANS's σ(q) pass) are timed on their own and reported beside the generation.
The measurement is stored with the device it ran on and reused on reruns; `make bench` always measures afresh.
"""

from __future__ import annotations

import logging
import os
import platform
from pathlib import Path

import torch
from omegaconf import OmegaConf

from scans import methods as methods_lib
from scans.artifacts import read_json, stable_hash, write_json
from scans.capability.cost import ScansSpec, measure
from scans.data import BENIGN, Prompt, load_table
from scans.methods import Method
from scans.methods.scans import Scans
from scans.models import encode
from scans.models.chat import tokenize
from scans.models.loading import resolve_device
from scans.stages.context import Run
from scans.stages.producers import produces
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


def scans_spec(r: Run, method: Scans) -> ScansSpec:
    ref = r.artifact("vectors")
    return ScansSpec(
        ref["harm_direction"],
        ref["refusal_vectors"],
        method.classify_layers,
        method.threshold,
        Steering(ref["refusal_vectors"], method.steer_layers, method.alpha, method.positions),
        method.response,
    )


def measure_method(r: Run, method: Method, prompts: list[str], batch: int) -> dict:
    c = r.cfg.capability.cost
    lm = r.lm
    dec = DecodingConfig(c.max_new_tokens, r.cfg.generation.repetition_penalty, batch, min_new_tokens=c.max_new_tokens)
    iv = methods_lib.intervention(r, method)  # built (an expert loaded) before anything is measured
    encoded = [encode(lm.chat, q) for q in prompts]
    generate(lm.model, lm.tokenizer, encoded[:batch], DecodingConfig(2, 1.1, batch))  # warm-up
    queries = [Prompt(q, BENIGN, "cost") for q in prompts]
    holder: dict = {}
    m = measure(lambda: holder.update(c=method.coefficients(r, queries, None)), lm.device)
    classify_s, peak = (m.seconds, m.peak_mem_mb) if holder["c"] is not None else (0.0, 0.0)
    m = measure(
        lambda: generate(lm.model, lm.tokenizer, encoded, dec, intervention=iv, coefficients=holder["c"]), lm.device
    )
    tokens = len(prompts) * c.max_new_tokens
    return {
        "model": r.model_name,
        "method": method.name,
        "batch": batch,
        "passes": iv.passes,
        "tokens_per_s": tokens / m.seconds,
        "peak_mem_mb": max(peak, m.peak_mem_mb),
        "classify_s": classify_s,
        "end_to_end_tokens_per_s": tokens / (m.seconds + classify_s),
    }


def methods(r: Run) -> list[Method]:
    """Every row of Table 2, Default first (the measurement is short)."""
    return methods_lib.with_default(methods_lib.rows(r))


def key(r: Run) -> str:
    c = OmegaConf.to_container(r.cfg.capability.cost, resolve=True)
    keys = [methods_lib.method_key(r, m) for m in methods(r)]
    where = {"device": device_name(resolve_device(r.cfg.model.device)), "cpus": os.cpu_count(), "host": platform.node()}
    return stable_hash({"config": c, "methods": keys, "where": where, "decoding": r.decoding_identity})


def complete(r: Run) -> bool:
    return r.store.is_complete(r.model_name, STAGE, key(r))


def _load(r: Run, path: Path) -> dict:
    return read_json(path / RESULT)


@produces("cost", STAGE, key, _load)
def _build(r: Run, tmp: Path) -> dict:
    r.release_other_models()  # a peak of this model alone, whichever stages ran before in this process
    r.interventions_cache.clear()  # and no expert model built by an earlier stage
    prompts = queries(r)
    rows = []
    single = r.cfg.capability.cost.single_prompts
    for method in methods(r):
        for batch in r.cfg.capability.cost.batch_sizes:
            rows.append(measure_method(r, method, prompts if batch > 1 else prompts[:single], batch))
            log.info("cost: %s", rows[-1])
        r.interventions_cache.pop(method, None)  # an expert model must not count in the next method's peak
    batches = list(r.cfg.capability.cost.batch_sizes)
    rows.sort(key=lambda row: batches.index(row["batch"]))  # stable: methods in table order within a batch size
    result = {"device": device_name(r.lm.device), "prompts": len(prompts), "single_prompts": min(single, len(prompts)),
              "rows": rows}  # fmt: skip
    write_json(tmp / RESULT, result)
    return result


def run(r: Run) -> dict:
    return r.artifact("cost")
