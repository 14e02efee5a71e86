"""Stage `steer`: the responses of every method (`scans.methods.rows`) on every evaluation set, as JSONL.

Each response set is keyed by the model, the method's settings and upstream artifacts, the decoding, the prompts and
the per-query coefficients (for SCANS: the signs σ(q), so settings whose signs agree share one generation).
"""

from __future__ import annotations

import logging
from dataclasses import asdict

import numpy as np
import torch
from omegaconf import open_dict

from scans import methods as methods_lib
from scans.artifacts import read_jsonl, stable_hash, write_jsonl
from scans.data import HARMFUL, Prompt
from scans.judge import flags_by_label
from scans.methods import Default, Method
from scans.models import encode
from scans.stages import align
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
    coefficients: torch.Tensor | None,
    max_new_tokens: int | None = None,
) -> str:
    """The folder of one method's responses on one set. The folder name carries the method's type, not its label,
    so a sweep column equal to a Table 2 row shares its responses. `coefficients` are the method's per-query values
    (`method.coefficients`: for SCANS, σ(q) from the `similarities` artifact), an input of the key, never computed by
    it."""
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
    given = None if coefficients is None else {name: coefficients}
    return respond_sets(r, method, {name: prompts}, given, max_new_tokens)[name]


def respond_sets(
    r: Run,
    method: Method,
    sets: dict[str, list[Prompt]],
    coefficients: dict[str, torch.Tensor] | None = None,
    max_new_tokens: int | None = None,
) -> dict[str, list[dict]]:
    """`respond` for several sets of one method: the sets not generated yet are generated together, in one run of
    length-sorted batches (sets of 64 prompts would leave the engine's batches of 128 half empty), and each is
    written as its own artifact, keyed as `respond` keys it."""
    return respond_jobs(r, [(method, sets, coefficients)], max_new_tokens)[0]


def respond_jobs(r: Run, jobs: list[tuple], max_new_tokens: int | None = None) -> list[dict[str, list[dict]]]:
    """`respond_sets` for several (method, sets, coefficients or None) jobs: consecutive jobs whose interventions act
    alike but for their per-row coefficients (`Intervention.acts_like`: SCANS rows that differ in α alone) are
    generated in one call, their rows side by side."""
    out: list[dict[str, list[dict]]] = []
    todo: list[tuple] = []  # (job index, method, set name, prompts, coefficients, key)
    for j, (method, sets, given) in enumerate(jobs):
        out.append({})
        for n, ps in sets.items():
            c = method.coefficients(r, ps, n) if given is None or n not in given else given[n]
            todo.append((j, method, n, ps, c, key(r, method, n, ps, c, max_new_tokens)))
    with r.store.building(r.model_name, STAGE, [item[-1] for item in todo]) as missing:
        _generate(r, [item for item in todo if item[-1] in missing], set(missing), max_new_tokens, out)
    for j, method, n, _, _, k in todo:
        if n not in out[j]:
            log.info("steer: reusing %s / %s", method.name, n)
            out[j][n] = read_jsonl(r.store.path(r.model_name, STAGE, k) / RESPONSES)
    return [{n: o[n] for n in sets} for o, (_, sets, _) in zip(out, jobs)]


def _generate(r: Run, todo: list[tuple], unwritten: set[str], max_new_tokens: int | None, out: list[dict]) -> None:
    """Generate the response sets of `todo` (their locks held by the caller) and write each artifact once."""
    groups: list[list[tuple]] = []
    for item in todo:
        iv = methods_lib.intervention(r, item[1])
        if groups and methods_lib.intervention(r, groups[-1][0][1]).acts_like(iv):
            groups[-1].append(item)
        else:
            groups.append([item])
    dec = decoding(r, max_new_tokens)
    for group in groups:
        prompts = [p for *_, ps, _, _ in group for p in ps]
        stacked = None
        if any(c is not None for *_, c, _ in group):
            stacked = torch.cat([torch.zeros(len(ps)) if c is None else c.float() for *_, ps, c, _ in group])
        names = ", ".join(dict.fromkeys(f"{m.name} {n}" for _, m, n, *_ in group))
        responses = iter(generate(
            r.lm.model, r.lm.tokenizer, [encode(r.lm.chat, p.text) for p in prompts], dec, desc=names,
            intervention=methods_lib.intervention(r, group[0][1]), coefficients=stacked,
        ))  # fmt: skip
        for j, method, n, ps, c, k in group:
            rows = [
                {
                    "eval_set": n,
                    "prompt": p.text,
                    "label": p.label,
                    "coefficient": None if c is None else float(c[i]),
                    "sign": None if c is None else int(torch.sign(c[i])),
                    "response": next(responses),
                }
                for i, p in enumerate(ps)
            ]
            if k in unwritten:
                provenance = {
                    "method": method.name, "eval_set": n, "n": len(rows), "settings": method.settings(),
                    "upstream": method.upstream(r), "decoding": asdict(dec),
                }  # fmt: skip
                with r.store.write(r.model_name, STAGE, k, provenance) as tmp:
                    write_jsonl(tmp / RESPONSES, rows)
                unwritten.discard(k)
                log.info("steer: %s / %s done (%d responses)", method.name, n, len(rows))
            out[j][n] = rows


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


def full_rows(r: Run) -> list[Method]:
    """The rows also run on every prompt of `steer.full.sets`: those of `steer.full.methods` that this run has and,
    with `best_other`, the other row (not Default) with the best balanced accuracy on Table 2's own sets (and the best
    of the rows of `best_of` by the same measure, unless it is already there): the mean of
    its refusal rates on the harmful sets and of its answer rates on the benign ones, judged by `judge.fit` (so that a
    report judged by another judge, `stage=judge judge=...`, asks for the rows that steer ran). Default always
    comes first: the full table's differences are against it. None when `method=<name>` runs one row alone."""
    f = r.cfg.steer.full
    if not f.sets or r.cfg.get("method") is not None:
        return []
    listed = methods_lib.names(r)
    chosen = [methods_lib.load(r, n) for n in listed if n in f.methods]
    others = [methods_lib.load(r, n) for n in listed if n not in f.methods]
    others = [m for m in others if not isinstance(m, Default)]
    if f.best_other and others:
        chosen.append(max(others, key=lambda m: balanced_accuracy(r, m)))
    group = [methods_lib.load(r, n) for n in listed if n in (f.get("best_of") or [])]
    if group:  # the best of these rows too (the successors), unless already there
        best = max(group, key=lambda m: balanced_accuracy(r, m))
        chosen += [] if best in chosen else [best]
    return methods_lib.with_default(chosen)


def balanced_accuracy(r: Run, method: Method) -> float:
    right: dict[bool, list[float]] = {True: [], False: []}
    for name, prompts in r.eval_sets.items():
        rate = float(np.mean(flags_by_label(r.cfg.judge.fit, {name: load(r, method, name, prompts)[1]})[name]))
        harmful = prompts[0].label == HARMFUL
        right[harmful].append(rate if harmful else 1.0 - rate)
    return 0.5 * sum(sum(v) / len(v) for v in right.values() if v) if all(right.values()) else 0.0


def run(r: Run) -> None:
    for method in methods_lib.rows(r):
        respond_sets(r, method, r.eval_sets)
    for method in full_rows(r):
        respond_sets(r, method, r.full_sets)
    if (base := base_run(r)) is not None:
        respond_sets(base, Default(), base.eval_sets)
        for build in align.builds(r).values():  # the organism's profile, in each precision it is built in
            for sets in (build.eval_sets, build.full_sets, align.validation(build)):
                respond_sets(build, Default(), sets)


def load(r: Run, method: Method, name: str, prompts: list[Prompt]) -> tuple[str, list[dict]]:
    """(key, responses) of one method on one set. Missing ones are generated with the sets they are generated with
    in the `steer` stage (every evaluation set of the method, or every set of `steer.full.sets`), so that a stage
    run alone gets the same batches, and so the same responses, as the pipeline."""
    c = method.coefficients(r, prompts, name)
    k = key(r, method, name, prompts, c)
    if not r.store.is_complete(r.model_name, STAGE, k):
        together = next((sets for sets in (r.eval_sets, r.full_sets) if sets.get(name) == prompts), {name: prompts})
        respond_sets(r, method, together)
    return k, read_jsonl(r.store.path(r.model_name, STAGE, k) / RESPONSES)
