"""The methods page: what each row of Table 2 learned from, its disjointness counts and its training time."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd


def _overlaps(summary: Mapping | None) -> list[Mapping]:
    if not summary:
        return []
    if "checked" in summary:
        return [summary]
    overlap = summary.get("overlap") or {}
    return [overlap] if "checked" in overlap else [v for v in overlap.values() if isinstance(v, Mapping)]


def methods_table(rows: Sequence[tuple[str, str, Mapping | None]]) -> pd.DataFrame:
    """(method name, class, prepare summary) -> one line per checked prompt pool."""
    out = []
    for name, kind, summary in rows:
        pools = _overlaps(summary)
        seconds = None
        if summary:
            parts = ("answer_seconds", "train_seconds", "seconds", "choice_seconds")
            seconds = sum(float(summary.get(k, 0.0)) for k in parts) or None
        for pool in pools or [{}]:
            out.append(
                {
                    "method": name, "class": kind, "learns from": pool.get("what", "—"),
                    "checked": pool.get("checked"), "exact": pool.get("exact"),
                    "near duplicates": pool.get("near_duplicate"), "kept": pool.get("kept"),
                    "prepare seconds": seconds,
                }
            )  # fmt: skip
    return pd.DataFrame(out)


def methods_markdown(table: pd.DataFrame, model: str, threshold: float, sets: Sequence[str]) -> str:
    text = f"# The methods of Table 2 ({model})\n\n"
    shown = table.apply(  # whole numbers; "—" for methods that learn nothing
        lambda c: c.map(lambda v: "—" if pd.isna(v) else f"{v:.0f}" if isinstance(v, float) else v)
    )
    text += shown.to_markdown(index=False, floatfmt=".0f") + "\n\n"
    text += (
        "`learns from`: every prompt a method trains on or shows as an example, checked against every prompt of "
        f"{', '.join(sets)} by exact match (normalised case, punctuation and spaces) and as a near duplicate "
        f"(content-word Jaccard ≥ {threshold:g}); matches are removed before use (few-shot examples must have none). "
        "`prepare seconds`: answering and training on 2 CPU cores, as measured when the artifact was built.\n"
    )
    return text
