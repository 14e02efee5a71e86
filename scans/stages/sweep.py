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


def configured(r: Run) -> Scans:
    """This job's method: the varied hyperparameter from its config key."""
    vary = r.cfg.sweep.vary
    value = {"alpha": r.cfg.steer.alpha, "threshold": r.cfg.classify.threshold, "layers": r.cfg.steer.layers}[vary]
    return method(r, vary, value)


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
    out = {}
    for name in sets(r):
        prompts = r.eval_sets[name]
        steer.respond(r, m, name, prompts)
        out[name] = judge.judge_set(r, m, name, prompts)
    return out


def run(r: Run) -> dict:
    m = configured(r)
    result = {"method": m.name, "refusal": {n: s["refusal_rate"] for n, s in rates(r, m).items()}}
    if r.cfg.sweep.vary == "layers":
        result["perplexity"] = {c: capability.perplexity(r, m, c)["ppl"] for c in capability.CORPORA}
    log.info("sweep: %s", result)
    return result
