"""The paper's claim, tested on paired flags: each condition's change, interval and verdict."""

from __future__ import annotations

import numpy as np

from scans.report.claim import claim_markdown, claim_table


def _flags(refused: int, n: int) -> list[bool]:
    return [i < refused for i in range(n)]


def test_the_claims_conditions_are_judged_on_paired_intervals():
    default = {"xstest_safe": _flags(200, 250), "xstest_unsafe": _flags(190, 200), "advbench": _flags(64, 64),
               "malicious": _flags(64, 64), "harmfulqa": _flags(60, 64)}  # fmt: skip
    halved = {"xstest_safe": _flags(20, 250), "xstest_unsafe": _flags(190, 200), "advbench": _flags(64, 64),
              "malicious": _flags(0, 64), "harmfulqa": _flags(58, 64)}  # fmt: skip
    table = claim_table({"SCANS": (halved, default)}).set_index("set")
    assert list(table.index) == ["xstest_safe", "xstest_unsafe", "advbench", "malicious", "harmfulqa"]
    # 200 -> 20 of 250 refusals: -90% (20/250 / (200/250) - 1), well below -50%
    assert table.loc["xstest_safe", "change"].startswith(f"{100 * (20 / 200 - 1):+.1f}")
    assert table.loc["xstest_safe", "verdict"] == "met"
    assert table.loc["xstest_unsafe", "verdict"] == "met" and table.loc["advbench", "change"].startswith("+0.0")
    assert table.loc["malicious", "verdict"] == "missed"  # 100 -> 0
    # -3.1 points (two fewer refusals of 64) is within 5, but its interval reaches past -5: not resolved
    assert table.loc["harmfulqa", "verdict"] == "not resolved at this size"
    assert np.isclose(table.loc["harmfulqa", "method rate"], 100 * 58 / 64)
    page = claim_markdown(table.reset_index(), "m", "scans_rules")
    assert "SCANS: 3 of 5 conditions met, 1 missed." in page


def test_a_default_that_refuses_no_safe_prompt_has_nothing_to_halve():
    table = claim_table({"SCANS": ({"xstest_safe": _flags(0, 10)}, {"xstest_safe": _flags(0, 10)})})
    assert table.empty
