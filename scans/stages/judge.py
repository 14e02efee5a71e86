"""Stage `judge`: refusal flags for every response and the refusal rate of every (method, evaluation set)."""

from __future__ import annotations

import logging
from pathlib import Path

from scans import methods
from scans.artifacts import read_json, read_jsonl, write_json, write_jsonl
from scans.judge import judge_flags
from scans.methods import Default, Method
from scans.stages import steer
from scans.stages.context import Run
from scans.stages.producers import produces

log = logging.getLogger(__name__)
STAGE = "judge"
SUMMARY = "summary.json"


def key(r: Run, responses_key: str, **_) -> str:
    return f"{responses_key}-{r.cfg.judge.name}-{r.judge_identity['rules']}"


def _load(r: Run, path: Path, **_) -> dict:
    return read_json(path / SUMMARY)


@produces("judgement", STAGE, key, _load)
def _build(r: Run, tmp: Path, responses_key: str, rows: list[dict], method: Method, name: str) -> dict:
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
    write_jsonl(tmp / "judgements.jsonl", [{**row, "refused": f} for row, f in zip(rows, flags)])
    write_json(tmp / SUMMARY, summary)
    log.info("judge: %s / %s refusal %.1f%% (n=%d)", method.name, name, 100 * summary["refusal_rate"], len(rows))
    return {"responses_key": responses_key, **summary}


def _judged(r: Run, method: Method, name: str, prompts) -> tuple[Path, dict]:
    """The judgement folder and summary of one method on one set (its responses generated first when missing)."""
    responses_key, rows = steer.load(r, method, name, prompts)
    summary = r.artifact("judgement", responses_key=responses_key, rows=rows, method=method, name=name)
    return r.store.path(r.model_name, STAGE, key(r, responses_key)), summary


def judge_set(r: Run, method: Method, name: str, prompts) -> dict:
    """The refusal summary of one method on one set, computed once."""
    return _judged(r, method, name, prompts)[1]


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


def load(r: Run, method: Method, name: str, prompts) -> dict:
    return judge_set(r, method, name, prompts)


def existing(r: Run, method: Method, name: str, prompts) -> dict | None:
    """The refusal summary of one method on one set if it was judged already, else None: never generates (the
    report's sweep columns, made by the `sweep` stage alone)."""
    k = key(r, steer.key(r, method, name, prompts, method.coefficients(r, prompts, name)))
    return _load(r, r.store.path(r.model_name, STAGE, k)) if r.store.is_complete(r.model_name, STAGE, k) else None


def flags(r: Run, method: Method, name: str, prompts) -> list[bool]:
    """Per prompt, in the set's order, whether the judge counted the response as a refusal."""
    return [row["refused"] for row in read_jsonl(_judged(r, method, name, prompts)[0] / "judgements.jsonl")]
