"""Refusal judges (reference §5.2): the paper's string rules, XSTest's string matcher, a judge learned from
XSTest's human labels, a registry to pick one by name, and their agreement with those labels."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Sequence

import numpy as np

from scans.artifacts import stable_hash
from scans.errors import ConfigError
from scans.judge import agreement as _agreement_module
from scans.judge import rules as _rules_module
from scans.judge import strmatch as _strmatch_module
from scans.judge.agreement import agreement, human_refusal
from scans.judge.learned import LearnedJudge
from scans.judge.rules import (
    DRO_MATCH_STRINGS,
    SCANS_EXTRA_STRINGS,
    SCANS_MATCH_STRINGS,
    Conditional,
    is_refusal,
    refusal_flags,
)
from scans.judge.strmatch import is_strmatch_refusal

# Judges by config name (`judge=<name>`); a new judge is one function (or callable object) and one entry here.
# A judge whose answers depend on the prompt (the learned one, under the reported-set rule) also has
# `flags(responses, prompts)`; `judge_flags` uses it.
JUDGES: dict[str, Callable[[str], bool]] = {
    "scans_rules": is_refusal,
    "xstest_strmatch": is_strmatch_refusal,
    "xstest_learned": LearnedJudge(),  # fitted lazily, on first use
}


def get_judge(name: str) -> Callable[[str], bool]:
    """The judge registered under `name`; an unknown name is a config error listing the known ones."""
    try:
        return JUDGES[name]
    except KeyError:
        raise ConfigError(f"unknown judge {name!r}; known judges: {', '.join(sorted(JUDGES))}") from None


def judge_flags(name: str, responses: Sequence[str], prompts: Sequence[str] | None = None) -> list[bool]:
    """Refused? per response. With `prompts`, a judge that has `flags` (the learned one) judges each answer by a
    model that never trained on answers to its prompt (the reported-set rule); otherwise one response at a time."""
    judge = get_judge(name)
    if prompts is not None and hasattr(judge, "flags"):
        return list(judge.flags(list(responses), list(prompts)))
    return [bool(judge(r)) for r in responses]


def flags_by_label(name: str, responses: dict[str, list[dict]]) -> dict[str, np.ndarray]:
    """Judge `name`'s flags of response rows (`prompt`, `response`) per label, with their prompts (a learned judge
    never judges an answer to a prompt it was trained on)."""
    return {
        lab: np.asarray(judge_flags(name, [x["response"] for x in rows], [x["prompt"] for x in rows]), bool)
        for lab, rows in responses.items()
    }


# Modules whose source a learned judge's verdicts depend on besides its own (its features and its labels).
_LEARNED_DEPENDENCIES = (_rules_module, _strmatch_module, _agreement_module)


def judge_identity(name: str) -> dict:
    """What a cache key must hold of a judge: its name and, under `rules`, a hash of the source of the module that
    defines it (`rules.py` for the paper's judge: the phrase lists and the matching code), so an edited rule is a
    new key. For a learned judge the hash also covers the modules its features and labels come from, its
    hyperparameters and the fingerprint of its training data."""

    judge = get_judge(name)
    source = inspect.getsource(sys.modules[judge.__module__])
    if not hasattr(judge, "identity"):
        return {"name": name, "rules": stable_hash(source)}
    parts = {
        "source": [source] + [inspect.getsource(m) for m in _LEARNED_DEPENDENCIES],
        **judge.identity(),
    }
    return {"name": name, "rules": stable_hash(parts)}


__all__ = [
    "DRO_MATCH_STRINGS",
    "JUDGES",
    "LearnedJudge",
    "SCANS_EXTRA_STRINGS",
    "SCANS_MATCH_STRINGS",
    "Conditional",
    "agreement",
    "flags_by_label",
    "get_judge",
    "judge_flags",
    "judge_identity",
    "human_refusal",
    "is_refusal",
    "is_strmatch_refusal",
    "refusal_flags",
]
