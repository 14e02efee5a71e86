"""Stage `judge`: refusal flags for every response and the refusal rate of every (method, evaluation set)."""

from __future__ import annotations

import logging

from scans import methods
from scans.artifacts import read_json, read_jsonl, write_json, write_jsonl
from scans.judge import judge_flags
from scans.methods import Default, Method
from scans.stages import steer
from scans.stages.context import Run

log = logging.getLogger(__name__)
STAGE = "judge"
SUMMARY = "summary.json"


def key(r: Run, responses_key: str) -> str:
    return f"{responses_key}-{r.cfg.judge.name}-{r.judge_identity['rules']}"


def judge_set(r: Run, method: Method, name: str, prompts) -> dict:
    """The refusal summary of one method on one set (responses must exist), computed once."""
    responses_key, rows = steer.load(r, method, name, prompts)
    k = key(r, responses_key)
    if r.store.is_complete(r.model_name, STAGE, k):
        return read_json(r.store.path(r.model_name, STAGE, k) / SUMMARY)
    # With the prompts, a learned judge never judges an answer with a model trained on answers to its prompt.
    flags = judge_flags(r.cfg.judge.name, [row["response"] for row in rows], [row["prompt"] for row in rows])
    summary = {
        "method": method.name,
        "eval_set": name,
        "n": len(rows),
        "refusals": sum(flags),
        "refusal_rate": sum(flags) / len(rows),
        "judge": r.cfg.judge.name,
    }
    with r.store.writing(r.model_name, STAGE, k, {"responses_key": responses_key, **summary}) as tmp:
        write_jsonl(tmp / "judgements.jsonl", [{**row, "refused": f} for row, f in zip(rows, flags)])
        write_json(tmp / SUMMARY, summary)
    log.info("judge: %s / %s refusal %.1f%% (n=%d)", method.name, name, 100 * summary["refusal_rate"], len(rows))
    return summary


def run(r: Run) -> None:
    for method in methods.rows(r):
        for name, prompts in r.eval_sets.items():
            judge_set(r, method, name, prompts)
    for method in steer.full_rows(r):
        for name, prompts in r.full_sets.items():
            judge_set(r, method, name, prompts)
    if (base := steer.base_run(r)) is not None:
        for name, prompts in base.eval_sets.items():
            judge_set(base, Default(), name, prompts)


def _path(r: Run, method: Method, name: str, prompts):
    responses_key = steer.key(r, method, name, prompts)
    return r.require("judge", STAGE, key(r, responses_key))


def load(r: Run, method: Method, name: str, prompts) -> dict:
    return read_json(_path(r, method, name, prompts) / SUMMARY)


def flags(r: Run, method: Method, name: str, prompts) -> list[bool]:
    """Per prompt, in the set's order, whether the judge counted the response as a refusal."""
    return [row["refused"] for row in read_jsonl(_path(r, method, name, prompts) / "judgements.jsonl")]
