"""Pipeline stages: each reads the config, calls the library, and writes keyed artifacts."""

from __future__ import annotations

from collections.abc import Callable

from scans.stages import (
    align,
    analyze,
    anchor,
    capability,
    classify,
    cost,
    export,
    extract,
    judge,
    judge_agreement,
    prepare,
    report,
    steer,
    sweep,
    tune,
)
from scans.stages.context import Run

STAGES: dict[str, Callable[[Run], object]] = {
    "align": align.run,
    "extract": extract.run,
    "anchor": anchor.run,
    "classify": classify.run,
    "tune": tune.run,
    "prepare": prepare.run,
    "analyze": analyze.run,
    "steer": steer.run,
    "judge": judge.run,
    "capability": capability.run,
    "cost": cost.run,
    "report": report.run,
    "judge_agreement": judge_agreement.run,
    "sweep": sweep.run,
    "export": export.run,
}
PIPELINE = (
    "align", "extract", "anchor", "classify", "tune", "prepare", "analyze", "steer", "judge", "capability", "cost",
    "report",
)  # fmt: skip


def run_stage(name: str, r: Run) -> None:
    for stage in PIPELINE if name == "all" else (name,):
        STAGES[stage](r)
