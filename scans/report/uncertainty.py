"""How sure the report can be: a 95% Wilson interval for every rate, a paired bootstrap interval for every
method-vs-Default difference over the same prompts, and a verdict for every target (met, missed, or not resolved at
this size). The intervals come from SciPy (`binomtest(...).proportion_ci`, `bootstrap(..., paired=True)`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

CONFIDENCE = 0.95
RESAMPLES = 2000
SEED = 0
MET, MISSED, UNRESOLVED = "met", "missed", "not resolved at this size"


def wilson(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials, in percent."""
    from scipy.stats import binomtest

    if n == 0:
        return (math.nan, math.nan)
    ci = binomtest(int(k), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return (100.0 * float(ci.low), 100.0 * float(ci.high))


def paired_bootstrap(
    method: Sequence[float],
    default: Sequence[float],
    statistic: Callable[..., np.ndarray] = np.mean,
    scale: float = 1.0,
    relative: bool = False,
    resamples: int = RESAMPLES,
    seed: int = SEED,
) -> tuple[float, float, float]:
    """(difference, low, high): statistic(method) − statistic(default), times `scale`, with a 95% percentile interval
    from resampling the *same* items (prompts, questions, documents, windows) for both. `statistic(x, axis=)` reduces
    along an axis, like np.mean. `relative`: statistic(method) / statistic(default) − 1 instead."""
    from scipy.stats import bootstrap

    a, b = np.asarray(method, dtype=float), np.asarray(default, dtype=float)
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"paired samples of different or zero size: {a.shape} vs {b.shape}")

    def diff(x, y, axis=-1):
        if relative:
            return scale * (statistic(x, axis=axis) / statistic(y, axis=axis) - 1.0)
        return scale * (statistic(x, axis=axis) - statistic(y, axis=axis))

    point = float(diff(a[None], b[None])[0])
    if np.all(a == b):  # nothing to resample: every item agrees
        return (point, point, point)
    res = bootstrap(
        (a, b), diff, paired=True, vectorized=True, n_resamples=resamples, confidence_level=CONFIDENCE,
        method="percentile", rng=np.random.default_rng(seed),
    )  # fmt: skip
    return (point, float(res.confidence_interval.low), float(res.confidence_interval.high))


def verdict_at_least(low: float, high: float, bound: float) -> str:
    """A target "≥ bound" for a quantity with interval [low, high]."""
    return MET if low >= bound else MISSED if high < bound else UNRESOLVED


def verdict_at_most(low: float, high: float, bound: float) -> str:
    return MET if high <= bound else MISSED if low > bound else UNRESOLVED


def verdict_within(low: float, high: float, bound: float) -> str:
    """A target "|difference| ≤ bound": met if the whole interval lies within, missed if it lies wholly outside."""
    if -bound <= low and high <= bound:
        return MET
    return MISSED if low > bound or high < -bound else UNRESOLVED


def interval(low: float, high: float, digits: int = 1) -> str:
    return f"[{low:.{digits}f}, {high:.{digits}f}]"


def with_interval(value: float, low: float, high: float, digits: int = 1) -> str:
    return f"{value:.{digits}f} {interval(low, high, digits)}"


def prompts_for_interval(half_width: float, rate: float = 0.5, confidence: float = CONFIDENCE) -> int:
    """Prompts per set for a rate's 95% interval to be ±`half_width` points at `rate` (normal approximation)."""
    from scipy.stats import norm

    z = norm.ppf(0.5 + confidence / 2)
    p = rate
    return math.ceil(z**2 * p * (1 - p) / (half_width / 100.0) ** 2)


def prompts_to_resolve(difference: float, discordant: float, power: float = 0.8) -> int:
    """Prompts for a paired comparison (the same prompts under two methods) to tell a `difference` (points) from 0
    at 95% with `power`, when a share `discordant` of the prompts changes outcome between the methods (McNemar,
    normal approximation: n = (z_a + z_b)² · d / δ²)."""
    from scipy.stats import norm

    z = norm.ppf(0.5 + CONFIDENCE / 2) + norm.ppf(power)
    delta = difference / 100.0
    if not 0 < delta <= discordant <= 1:
        raise ValueError(f"need 0 < difference ({delta}) <= discordant share ({discordant}) <= 1")
    return math.ceil(z**2 * discordant / delta**2)
