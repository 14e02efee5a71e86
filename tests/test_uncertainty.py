"""The report's uncertainty: Wilson intervals against the closed form, paired bootstrap intervals against a plain
resampling loop, and the verdicts of target checks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from scans.report import table2 as t2
from scans.report import uncertainty as u


def _wilson_closed_form(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    # Wilson (1927): (p + z²/2n ± z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)
    p = k / n
    centre = p + z * z / (2 * n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (100 * (centre - half) / (1 + z * z / n), 100 * (centre + half) / (1 + z * z / n))


@pytest.mark.parametrize("k,n", [(0, 64), (45, 64), (64, 64), (7, 20), (383, 450)])
def test_wilson_equals_the_closed_form(k, n):
    assert u.wilson(k, n) == pytest.approx(_wilson_closed_form(k, n), abs=1e-9)


def test_a_64_prompt_rate_carries_about_twelve_points_each_way():
    lo, hi = u.wilson(32, 64)
    assert 11.5 < (hi - lo) / 2 < 12.5
    assert u.prompts_for_interval(5) == 385  # ±5 points at 50%: 1.96² · 0.25 / 0.05²
    # The README's paired figures: (z_.975 + z_.8)² · d / 0.05², d the share of prompts whose outcome changes.
    assert u.prompts_to_resolve(5, 0.10) == math.ceil((1.959964 + 0.841621) ** 2 * 0.10 / 0.05**2) == 314
    assert u.prompts_to_resolve(5, 0.30) == 942


def test_paired_bootstrap_matches_a_plain_resampling_loop():
    rng = np.random.default_rng(3)
    a = (rng.random(200) < 0.35).astype(float)
    b = (rng.random(200) < 0.55).astype(float)
    diff, lo, hi = u.paired_bootstrap(a, b, scale=100.0, resamples=4000)
    assert diff == pytest.approx(100 * (a.mean() - b.mean()))
    # The same statistic by hand: resample item indices, both methods together.
    idx = np.random.default_rng(11).integers(0, 200, size=(4000, 200))
    by_hand = np.percentile(100 * (a[idx].mean(1) - b[idx].mean(1)), [2.5, 97.5])
    assert lo == pytest.approx(by_hand[0], abs=1.5) and hi == pytest.approx(by_hand[1], abs=1.5)
    assert lo < diff < hi


def test_pairing_narrows_the_interval_of_correlated_samples():
    rng = np.random.default_rng(0)
    base = rng.normal(size=300)
    a, b = base + 0.1 + 0.05 * rng.normal(size=300), base
    _, lo, hi = u.paired_bootstrap(a, b)
    assert lo > 0 and hi - lo < 0.05  # unpaired, the spread of `base` (sd 1) would swamp a 0.1 shift
    assert u.paired_bootstrap(b, b) == (0.0, 0.0, 0.0)


def test_relative_perplexity_difference():
    nll_a, nll_b = np.log([11.0, 12.0, 13.0, 12.0]), np.log([10.0, 11.0, 12.0, 11.0])
    point, lo, hi = u.paired_bootstrap(nll_a, nll_b, lambda x, axis: np.exp(np.mean(x, axis=axis)), relative=True)
    expected = math.exp(nll_a.mean()) / math.exp(nll_b.mean()) - 1
    assert point == pytest.approx(expected) and lo <= point <= hi


@pytest.mark.parametrize(
    "lo,hi,bound,at_least,at_most,within",
    [
        (91.7, 99.7, 90, u.MET, u.MISSED, u.MISSED),
        (81.0, 95.6, 90, u.UNRESOLVED, u.UNRESOLVED, u.UNRESOLVED),
        (47.1, 70.5, 80, u.MISSED, u.MET, u.MET),
        (-1.5, 1.0, 2, u.MISSED, u.MET, u.MET),
        (-3.0, 1.0, 2, u.MISSED, u.MET, u.UNRESOLVED),
        (-5.0, -2.5, 2, u.MISSED, u.MET, u.MISSED),
    ],
)
def test_verdicts(lo, hi, bound, at_least, at_most, within):
    assert u.verdict_at_least(lo, hi, bound) == at_least
    assert u.verdict_at_most(lo, hi, bound) == at_most
    assert u.verdict_within(lo, hi, bound) == within


def test_table2_intervals_pool_the_avg_columns_and_differences_are_paired():
    lay = t2.PAPER
    # Different refusals per set, so that pooling the wrong sets (or a wrong direction) gives another count.
    refusals = dict(zip(lay.sets, (10, 50, 3, 60, 20, 5, 55, 40)))  # benign: answered = 64 - refusals
    ci = t2.intervals({s: (64, k) for s, k in refusals.items()}, lay)
    assert ci["xstest_safe"] == u.wilson(10, 64)
    assert ci["xstest_avg"] == u.wilson((64 - 10) + 50, 128) and ci["repe_avg"] == u.wilson((64 - 3) + 60, 128)
    right = sum(64 - k if lay.labels[s] == "benign" else k for s, k in refusals.items())
    assert ci["avg"] == u.wilson(right, 512) and right == 54 + 50 + 61 + 60 + 44 + 59 + 55 + 40
    lay = t2.PAPER
    flags = {s: [i % 2 == 0 for i in range(64)] for s in lay.sets}
    more = {s: [True] * 64 for s in lay.sets}  # refuses everything: +50 points on every subset
    diff = t2.differences(more, flags, lay)
    assert diff["xstest_safe"][0] == pytest.approx(50.0) and diff["avg"][0] == pytest.approx(0.0)
    assert diff["xstest_safe"][1] > 35  # paired: 32 of 64 prompts change, the interval stays well above 0


def test_the_papers_table5_rows_keep_their_columns_in_the_sweep_layout():
    from scans.report.sweeps import PAPER, PAPER_TABLE5, PAPER_TABLE5_COLUMNS, table5

    df = table5([dict(zip(PAPER_TABLE5_COLUMNS, row)) for row in PAPER_TABLE5], PAPER)
    middle = df.set_index(["model", "segment"]).loc[("Llama2-7b-chat (paper)", "middle")]  # reference §3.9
    assert (middle["oktest"], middle["truthfulqa"], middle["advbench"], middle["malicious"]) == (0.33, 0.80, 99.34, 100)
    assert (middle["xstest_avg"], middle["avg"]) == (92.00, 97.76)
