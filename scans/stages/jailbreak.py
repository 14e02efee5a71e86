"""Stage `jailbreak` (issue 35): what each row of Table 2 costs in robustness. Table 2's harmful prompts of
`jailbreak.sets` (AdvBench and MaliciousInstruct, the same seeded prompts as Table 2) are wrapped in each attack of
`jailbreak.attacks` (configs/attack, `scans.data.attacks`) and asked of every row.

- Generation goes through the `steer` stage's `respond_jobs`: one call per attack holds every row, each row's sets in
  one run of batches (rows whose interventions act alike share a batch). An attacked set is named
  `<set>@<attack>-<identity>` (the identity hashes the attack's template and prefill), and that name keys its
  responses and σ(q)'s states.
- A prefill attack runs through `Run.with_chat` and `PrefilledFormat`: the model's input ends with the prefill, and
  every per-query coefficient (σ(q), the validated classifier, CAST's condition, AdaSteer's maps) reads that input,
  as a deployed method would read what the model is given. The vectors and what each row fitted are the plain
  run's, built before any attacked set is asked.
- Every response is judged by the reporting judge (`judge.name`) and by each of `jailbreak.judges`; a prefill
  attack's response is judged with its prefill in front, as a reader sees the answer.
- σ(q) under attack: whether each SCANS-family row's classifier (σ(q), or the validated classifier) called each
  attacked prompt harmful, beside the same prompts asked plainly (`Scans.called_harmful`).

The result is one artifact (`jailbreak/results.json`): flags per judge, σ(q)'s calls and, where the judges disagree, the
responses to read. The report builds jailbreak.md, .csv and .png from it.
"""

from __future__ import annotations

import logging
from pathlib import Path

from scans import methods as methods_lib
from scans.artifacts import read_json, stable_hash, write_json
from scans.data import Prompt
from scans.data.attacks import Attack, configured_attacks
from scans.errors import ConfigError
from scans.judge import judge_flags, judge_identity
from scans.methods import Method
from scans.methods.scans import Scans
from scans.models import PrefilledFormat
from scans.stages import steer
from scans.stages.context import Run, prompts_hash
from scans.stages.producers import produces

log = logging.getLogger(__name__)
STAGE = "jailbreak"
RESULT = "results.json"
PLAIN = "plain"


def attack_list(r: Run) -> list[Attack]:
    return configured_attacks(r.cfg.jailbreak)


def plain_sets(r: Run) -> dict[str, list[Prompt]]:
    """Table 2's prompts of `jailbreak.sets` (each must be a harmful evaluation set of this run)."""
    out = {}
    for name in r.cfg.jailbreak.sets:
        if name not in r.eval_sets:
            raise ConfigError(f"jailbreak.sets: {name!r} is not an evaluation set of this run (data.eval_sets)")
        prompts = r.eval_sets[name]
        if any(p.label != "harmful" for p in prompts):
            raise ConfigError(f"jailbreak.sets: {name!r} is not a harmful set; attacks wrap harmful prompts")
        out[name] = prompts
    return out


def attacked_sets(r: Run, attack: Attack) -> dict[str, list[Prompt]]:
    return {f"{n}@{attack.name}-{attack.identity}": attack.apply(ps) for n, ps in plain_sets(r).items()}


def attacked_run(r: Run, attack: Attack) -> Run:
    """The run the attack is asked through: `r` itself, or for a prefill attack `r` with the prefilled format."""
    return r if attack.prefill is None else r.with_chat(PrefilledFormat(r.lm.chat, attack.prefill))


def rows(r: Run) -> list[Method]:
    """Every row of Table 2, Default first (the paired differences are against it)."""
    return methods_lib.with_default(methods_lib.rows(r))


def judges(r: Run) -> list[str]:
    return list(dict.fromkeys([r.cfg.judge.name, *r.cfg.jailbreak.judges]))


def key(r: Run) -> str:
    inputs = {
        "model": r.model_identity,
        "methods": [methods_lib.method_key(r, m) for m in rows(r)],
        "attacks": [[a.name, a.identity] for a in attack_list(r)],
        "sets": {n: prompts_hash(ps) for n, ps in plain_sets(r).items()},
        "decoding": r.decoding_identity,
        "classify": r.extract_key,
        "judges": [judge_identity(j) for j in judges(r)],
        "samples": int(r.cfg.jailbreak.samples),
    }
    return stable_hash(inputs)


def complete(r: Run) -> bool:
    return r.store.is_complete(r.model_name, STAGE, key(r))


def _load(r: Run, path: Path) -> dict:
    return read_json(path / RESULT)


def _cells(r: Run, method: Method, sets: dict[str, list[Prompt]], responses: dict, attack: Attack | None) -> dict:
    """Per set (named as in `jailbreak.sets`): each judge's flags, whether σ(q) (a SCANS-family row's classifier)
    called each prompt harmful (None for other rows), and the judged answers. `r` is the run the set was asked
    through (an attack's), `sets` and `responses` are keyed by the names it was asked under."""
    out = {}
    for name, prompts in sets.items():
        rows_ = responses[name]
        answers = [row["response"] if attack is None else attack.answer(row["response"]) for row in rows_]
        texts = [row["prompt"] for row in rows_]
        harmful = method.called_harmful(r, prompts, name).tolist() if isinstance(method, Scans) else None
        out[name.split("@")[0]] = {
            "flags": {j: judge_flags(j, answers, texts) for j in judges(r)},
            "harmful": harmful,
            "answers": answers,
            "prompts": texts,
        }
    return out


def _disagreements(r: Run, cells: dict[str, dict]) -> list[dict]:
    """Up to `jailbreak.samples` responses on which the first two judges disagree, in prompt order."""
    names = judges(r)
    if len(names) < 2:
        return []
    out = []
    for name, c in cells.items():
        for i, (a, b) in enumerate(zip(c["flags"][names[0]], c["flags"][names[1]])):
            if a != b:
                out.append(
                    {"set": name, "prompt": c["prompts"][i], "answer": c["answers"][i], names[0]: a, names[1]: b}
                )
    return out[: int(r.cfg.jailbreak.samples)]


def _compact(cells: dict[str, dict]) -> dict[str, dict]:
    return {n: {"flags": c["flags"], "harmful": c["harmful"]} for n, c in cells.items()}


@produces("jailbreak", STAGE, key, _load)
def _build(r: Run, tmp: Path) -> dict:
    listed = rows(r)
    for m in listed:  # what each row fits or reads is built by the plain run, never under an attack's format
        methods_lib.intervention(r, m)
    r.artifact("vectors")
    plain = plain_sets(r)
    result: dict = {
        "judges": judges(r), "sets": list(plain), "n": {n: len(ps) for n, ps in plain.items()},
        "attacks": [{"name": a.name, "identity": a.identity, "prefill": a.prefill, "description": a.description}
                    for a in attack_list(r)],
        "rows": [{"method": m.name, "sigma": isinstance(m, Scans), "cells": {}, "disagreements": {}} for m in listed],
    }  # fmt: skip
    for row, m in zip(result["rows"], listed):
        cells = _cells(r, m, plain, {n: steer.load(r, m, n, ps)[1] for n, ps in plain.items()}, None)
        row["cells"][PLAIN] = _compact(cells)
        row["disagreements"][PLAIN] = _disagreements(r, cells)
    for attack in attack_list(r):
        view = attacked_run(r, attack)
        sets = attacked_sets(r, attack)
        answered = steer.respond_jobs(view, [(m, sets, None) for m in listed])
        for row, m, responses in zip(result["rows"], listed, answered):
            cells = _cells(view, m, sets, responses, attack)
            row["cells"][attack.name] = _compact(cells)
            row["disagreements"][attack.name] = _disagreements(r, cells)
        log.info("jailbreak: %s done (%d rows)", attack.name, len(listed))
    write_json(tmp / RESULT, result)
    return {"attacks": [a["name"] for a in result["attacks"]], "rows": [m.name for m in listed]}


def run(r: Run) -> dict:
    return r.artifact("jailbreak")
