"""Refusal judges (reference §5.2): the paper's string rules, a registry to pick one by name, and their
agreement with XSTest's human labels."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable

from scans.errors import ConfigError
from scans.judge.agreement import agreement, human_refusal
from scans.judge.rules import (
    DRO_MATCH_STRINGS,
    SCANS_EXTRA_STRINGS,
    SCANS_MATCH_STRINGS,
    Conditional,
    is_refusal,
    refusal_flags,
)

# Judges by config name (`judge=<name>`); a new judge is one function and one entry here.
JUDGES: dict[str, Callable[[str], bool]] = {
    "scans_rules": is_refusal,
}


def get_judge(name: str) -> Callable[[str], bool]:
    """The judge registered under `name`; an unknown name is a config error listing the known ones."""
    try:
        return JUDGES[name]
    except KeyError:
        raise ConfigError(f"unknown judge {name!r}; known judges: {', '.join(sorted(JUDGES))}") from None


def judge_identity(name: str) -> dict:
    """What a cache key must hold of a judge: its name and a hash of the source of the module that defines it
    (`rules.py` for the paper's judge: the phrase lists and the matching code), so an edited rule is a new key."""
    from scans.artifacts import stable_hash

    module = sys.modules[get_judge(name).__module__]
    return {"name": name, "rules": stable_hash(inspect.getsource(module))}


__all__ = [
    "DRO_MATCH_STRINGS",
    "JUDGES",
    "SCANS_EXTRA_STRINGS",
    "SCANS_MATCH_STRINGS",
    "Conditional",
    "agreement",
    "get_judge",
    "judge_identity",
    "human_refusal",
    "is_refusal",
    "refusal_flags",
]
