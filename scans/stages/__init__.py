"""Pipeline stages: each reads the config, calls the library, and writes keyed artifacts."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from scans.report import run_record
from scans.stages import (
    align,
    analyze,
    anchor,
    capability,
    classify,
    cost,
    export,
    extract,
    jailbreak,
    judge,
    judge_agreement,
    prepare,
    report,
    steer,
    sweep,
    tune,
)
from scans.stages.context import Run

log = logging.getLogger(__name__)

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
    "sweeps": sweep.run_all,
    "export": export.run,
    "jailbreak": jailbreak.run,
}
PIPELINE = (
    "align", "extract", "anchor", "classify", "tune", "prepare", "analyze", "steer", "judge", "capability", "cost",
    "sweeps", "report",
)  # fmt: skip


def run_stage(name: str, r: Run) -> None:
    """Run one stage, or with `all` the pipeline, which then writes its run record (run.md, run.csv) beside the
    report: each stage's wall time."""
    if name != "all":
        STAGES[name](r)
        return
    seconds: dict[str, float] = {}
    for stage in PIPELINE:
        start = time.perf_counter()
        STAGES[stage](r)
        seconds[stage] = time.perf_counter() - start
        log.info("stage %s: %.0f s", stage, seconds[stage])
    run_record.write(report.model_folder(r), r.model_name, _command(), seconds, r.lm.device)


def _command() -> str:
    """The command line of this run, as Hydra parsed it (`python -m scans stage=all` outside Hydra)."""
    from hydra.core.hydra_config import HydraConfig

    overrides = list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else ["stage=all"]
    return " ".join(["python -m scans", *overrides])
