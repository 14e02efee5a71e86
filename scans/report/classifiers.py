"""The harm classifiers page (classifiers x anchor sets, on the validation split and on XSTest) and the disjointness
page (what the rule removed from every prompt set the project learns or chooses from)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from scans.report.analysis import span


def _note(c: Mapping) -> str:
    if c.get("row"):
        return "the SCANS row's σ(q)"
    return "its kind's validated best" if c.get("validated_best") else ""


def classifiers_table(result: Mapping) -> pd.DataFrame:
    rows = []
    for c in result["classifiers"]:
        per_layer = c.get("per_layer_auroc")
        rows.append(
            {
                "classifier": c.get("kind", c["classifier"]),
                "anchors": c.get("anchors", ""),
                "𝓛": span(c["layers"]) if c.get("layers") else "",
                "𝒯": c.get("threshold"),
                "validation AUROC": c.get("validation_auroc"),
                "XSTest AUROC": c["auroc"],
                "XSTest best layer AUROC": max(per_layer) if per_layer else None,
                "precision": c["precision"],
                "recall": c["recall"],
                "F1": c["f1"],
                "note": _note(c),
            }
        )
    return pd.DataFrame(rows)


def classifiers_markdown(table: pd.DataFrame, result: Mapping, sets: Mapping[str, int], model: str) -> str:
    chosen = result.get("chosen")
    lines = [
        f"# Harm classifiers on `{model}`",
        "",
        "Each learnt classifier is fitted on an anchor set, and its window of layers 𝓛 (best AUROC) and threshold 𝒯"
        " (best balanced accuracy) are chosen on the validation split ("
        + ", ".join(f"{k} {n}" for k, n in sets.items())
        + " prompts). Nothing is fitted or chosen on XSTest; the XSTest columns score all "
        f"{result['n']['unsafe']} unsafe and {result['n']['safe']} safe prompts (harmful = positive class). "
        "The keyword filter learns nothing.",
        "",
    ]
    if chosen:
        lines += [
            f"Chosen for the `SCANS + classifier` row (`classify.use={chosen['use']}`): **{chosen['kind']}** on the "
            f"**{chosen['anchors']}** anchors, 𝓛 {span(chosen['layers'])}, 𝒯 {chosen['threshold']:.4f}, validation "
            f"AUROC {chosen['auroc']:.3f}; steering α {chosen['alpha']:g}, layers {span(chosen['steer_layers'])}.",
            "",
        ]
    lines += [table.to_markdown(index=False, floatfmt=".3f"), ""]
    return "\n".join(lines)


def disjointness_markdown(rows: Sequence[Mapping], sets: Sequence[str], threshold: float) -> str:
    df = pd.DataFrame(rows, columns=["pool", "role", "checked", "exact", "near_duplicate", "kept"])
    return "\n".join(
        [
            "# Disjointness: what the rule removed",
            "",
            "Every prompt the project learns or chooses from is checked against every prompt of "
            + ", ".join(sets)
            + f": removed when equal after normalising case, punctuation and spaces (exact), or when it shares at "
            f"least {threshold:g} of its content words (Jaccard, stop words removed: near duplicate). Learnt-from "
            "prompts are also kept off the validation split. AdvBench and TruthfulQA anchors are drawn only among "
            "prompts with no exact or near duplicate elsewhere in those sets, their own file included. The baselines' "
            "pools are on the methods page.",
            "",
            df.to_markdown(index=False),
            "",
        ]
    )
