"""Stage `sweep`: one column of Tables 5-7, the headline SCANS row with one hyperparameter replaced.

`sweep.vary` names the hyperparameter and the job takes its value from the usual key, so a Hydra multirun over that
key gives a table: `steer.alpha` (Table 6), `classify.threshold` (Table 7) or `steer.layers` (Table 5: a segment
name, `former` / `middle` / `latter`, or a range). The other hyperparameters are the headline row's. Every job reads
the extracted vectors and the cached per-layer similarities (no second extraction or classification pass), and the
responses are keyed by σ(q)'s signs, so columns whose signs agree, and the column equal to Table 2's row, share one
generation. A job generates and judges the sets of Tables 5-7 and, for Table 5, measures perplexity.
"""

from __future__ import annotations

import logging
from dataclasses import replace

from scans import methods
from scans.errors import ConfigError
from scans.methods.scans import Scans
from scans.stages import capability, judge, steer
from scans.stages.context import Run

log = logging.getLogger(__name__)


def method(r: Run, vary: str, value) -> Scans:
    """The headline row with `vary` set to `value`."""
    base = methods.headline(r)
    if vary == "alpha":
        return replace(base, name=f"{base.name}, α={float(value):g}", alpha=float(value))
    if vary == "threshold":
        return replace(base, name=f"{base.name}, 𝒯={float(value):g}", threshold=float(value))
    layers = tuple(r.layers_of(value))
    return replace(base, name=f"{base.name}, layers {value}", steer_layers=layers)


def sets(r: Run) -> list[str]:
    """The sets of Tables 5-7 (`sweep.sets`), which must be evaluation sets of the run."""
    names = list(r.cfg.sweep.sets)
    missing = [n for n in names if n not in r.cfg.data.eval_sets]
    if not names or missing:
        raise ConfigError(
            f"sweep.sets must be a non-empty subset of data.eval_sets; not evaluated: {', '.join(missing) or 'none'}"
        )
    return names


def rates(r: Run, m: Scans) -> dict[str, dict]:
    """The judge's summary of `m` on each set of Tables 5-7 (generated and judged once)."""
    names = sets(r)
    steer.respond_sets(r, m, {name: r.eval_sets[name] for name in names})
    return {name: judge.judge_set(r, m, name, r.eval_sets[name]) for name in names}


def column(r: Run, vary: str, value) -> dict:
    """One column: the headline row with `vary` set to `value`, its refusal rates (and, for layers, perplexity)."""
    m = method(r, vary, value)
    result = {"method": m.name, "refusal": {n: s["refusal_rate"] for n, s in rates(r, m).items()}}
    if vary == "layers":
        result["perplexity"] = {c: capability.perplexity(r, m, c)["ppl"] for c in capability.CORPORA}
    log.info("sweep: %s", result)
    return result


def run(r: Run) -> dict:
    vary = r.cfg.sweep.vary
    value = {"alpha": r.cfg.steer.alpha, "threshold": r.cfg.classify.threshold, "layers": r.cfg.steer.layers}[vary]
    return column(r, vary, value)


def grid(r: Run) -> list[tuple[str, object]]:
    """Every column the report's Tables 5-7 look for: `sweep.alphas`, `analysis.paper_thresholds`, `sweep.segments`
    (less a segment that is empty for this model's depth, which the report lists as missing)."""
    segments = []
    for s in r.cfg.sweep.segments:
        try:
            r.layers_of(s, "sweep.segments[]")
            segments.append(s)
        except ConfigError as exc:
            log.warning("sweeps: no Table 5 column %s (%s)", s, exc)
    return [
        *(("alpha", a) for a in r.cfg.sweep.alphas),
        *(("threshold", t) for t in r.cfg.analysis.paper_thresholds),
        *(("layers", s) for s in segments),
    ]


def run_all(r: Run) -> list[dict]:
    """Stage `sweeps`: every column of Tables 5-7 in this process (`make reproduce`); a multirun of `stage=sweep`
    makes the same artifacts, one column a job (`make sweeps`, for other grids)."""
    return [column(r, vary, value) for vary, value in grid(r)]
