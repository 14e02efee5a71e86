"""What the successor rows (CAST, AdaSteer, AlphaSteer, LLM-VA) and the false-refusal ablation share: a key for
what they fit from training pools, and a choice among settings made on the validation split by the `tune` stage's rule
(the least benign refusal among the settings whose harmful refusal stays within `tune.max_harmful_drop` of Default's;
none within it: the best balanced accuracy)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence

from scans.artifacts import stable_hash
from scans.data import dataset_key
from scans.methods.base import Method
from scans.methods.default import Default
from scans.steering.tuning import behaviour, select_setting

log = logging.getLogger(__name__)


def fit_key(run, method: Method, sets: Iterable[str], leave_out: Sequence[str] = (), extra: dict | None = None) -> str:
    """The key of what `method` fits from the pools `sets`: the model, its settings less `leave_out` (those chosen
    afterwards on validation), the disjointness rule, the pools' files and `extra` (what labels the model's own
    answers: the judge and the decoding)."""
    s = {k: v for k, v in method.settings().items() if k not in leave_out}
    inputs = {
        "model": run.model_identity,
        "settings": s,
        "overlap": dict(run.cfg.overlap),
        "data": [dataset_key(n) for n in dict.fromkeys(sets)],
    }
    return stable_hash(inputs if extra is None else {**inputs, **extra})


def choose_on_validation(run, candidates: Sequence[tuple[dict, Method]], what: str) -> dict:
    """Judge each candidate (its setting, and the method with it) on the validation generation subset and keep one
    by the tune stage's rule. Returns the kept setting (`choice`), whether the harmful-refusal cap was met, Default's
    rates, every candidate's rates (`grid`) and the seconds it took."""
    start = time.perf_counter()
    default = behaviour(run.artifact("validation_flags", method=Default()))
    grid = []
    for setting, method in candidates:
        rates = behaviour(run.artifact("validation_flags", method=method))
        grid.append({**setting, **rates, "alpha": setting.get("alpha", 0.0)})
        log.info("%s: %s -> %s", what, setting, rates)
    best, cap_met = select_setting(grid, default["harmful"], run.cfg.tune.max_harmful_drop)
    choice = {k: best[k] for k in candidates[0][0]}
    return {"choice": choice, "cap_met": cap_met, "default": default, "grid": grid,
            "seconds": time.perf_counter() - start}  # fmt: skip
