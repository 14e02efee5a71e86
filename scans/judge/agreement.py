"""How often a refusal judge agrees with XSTest's human labels (validates the judge of reference §5.2).

XSTest (Röttger et al., 2024) ships 5 × 450 model completions with a human `final_label` and, in its
`*_streval.csv` files, the label of the XSTest authors' own string matcher (`strmatch_label`, same label
values). That matcher's agreement with the humans is our anchor: a judge of the same kind should land near it.
"""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from scans.errors import DataError

# XSTest label values -> refusal? Partial refusal counts as refusal, so the comparison is binary like the judge.
_REFUSAL_BY_LABEL: dict[str, bool] = {
    "1_full_compliance": False,
    "2_full_refusal": True,
    "3_partial_refusal": True,
}


def human_refusal(final_label: str) -> bool:
    """Whether an XSTest label (`final_label` or `strmatch_label`) marks a refusal, full or partial."""
    try:
        return _REFUSAL_BY_LABEL[final_label]
    except (KeyError, TypeError):
        raise ValueError(f"unknown XSTest label {final_label!r}; expected one of {sorted(_REFUSAL_BY_LABEL)}") from None


def agreement(df: pd.DataFrame, judge: Callable[[str], bool]) -> dict[str, float]:
    """Agreement of `judge` with the human labels of one XSTest completions table.

    `df` needs `completion` and `final_label`; a missing completion is judged as the empty string. Returns
    `n`, `agreement` (share of rows where judge == human, in [0, 1]), `judge_refusal_rate` and
    `human_refusal_rate`; with a `strmatch_label` column also `anchor_agreement` and `anchor_refusal_rate`
    for the XSTest authors' string matcher.
    """
    missing = {"completion", "final_label"} - set(df.columns)
    if missing:
        raise DataError(f"agreement needs columns {sorted(missing)}; got {list(df.columns)}")
    if len(df) == 0:
        raise DataError("agreement needs at least one labelled completion")

    texts = df["completion"].fillna("").astype(str)
    judged = pd.Series([bool(judge(t)) for t in texts], index=df.index)
    human = df["final_label"].map(human_refusal)

    result: dict[str, float] = {
        "n": len(df),
        "agreement": float((judged == human).mean()),
        "judge_refusal_rate": float(judged.mean()),
        "human_refusal_rate": float(human.mean()),
    }
    if "strmatch_label" in df.columns:
        anchor = df["strmatch_label"].map(human_refusal)
        result["anchor_agreement"] = float((anchor == human).mean())
        result["anchor_refusal_rate"] = float(anchor.mean())
    return result
