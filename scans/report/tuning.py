"""The record of the `SCANS (tuned)` choice: what was chosen on the validation split, and the evidence."""

from __future__ import annotations

import pandas as pd


def _rule(v: dict) -> str:
    cap = v.get("max_harmful_drop")
    if cap is None:
        return "the best balanced accuracy of the grid below"
    if not v.get("cap_met", True):
        return f"no setting kept harmful refusal within {100 * cap:g} points of Default, so the best balanced accuracy"
    return (
        f"the least benign refusal among the settings whose harmful refusal stays within {100 * cap:g} points of "
        "Default"
    )


def tuning_markdown(choice: dict, name: str) -> str:
    v = choice["validation"]
    auroc = pd.DataFrame({"layer": range(len(v["per_layer_auroc"])), "auroc": v["per_layer_auroc"]})
    grid = pd.DataFrame(v["grid"])
    grid["steer_layers"] = grid["steer_layers"].map(lambda ls: f"{ls[0]}-{ls[-1]}")
    layers = choice["classify_layers"]
    return "\n".join(
        [
            f"# SCANS (tuned) on `{name}`: choice on the validation split",
            "",
            "Validation prompts (never reported as test results): "
            + ", ".join(f"{k} {n}" for k, n in v["sets"].items())
            + ".",
            "",
            f"- classification layers 𝓛 = {layers[0]}-{layers[-1]}: validation AUROC {v['classifier_auroc']:.3f}"
            f" (paper recipe's 𝓛: {v['paper_recipe_auroc']:.3f})",
            f"- threshold 𝒯 = {choice['threshold']:.4f}: balanced accuracy {v['classifier_balanced_accuracy']:.3f}",
            f"- α = {choice['alpha']:g}, steering layers {choice['steer_layers'][0]}-{choice['steer_layers'][-1]}: "
            + _rule(v),
            "",
            "## Behaviour grid (refusal rate on a validation subset of "
            + ", ".join(f"{n} {k}" for k, n in v["generation_subset"].items())
            + " prompts)",
            "",
            f"Default: harmful {100 * v['default_behaviour']['harmful']:.1f}%, benign"
            f" {100 * v['default_behaviour']['benign']:.1f}%.",
            "",
            grid.to_markdown(index=False, floatfmt=".3f"),
            "",
            "## Per-layer AUROC of the harm similarity (harmful = positive), the classifier's diagnosis",
            "",
            auroc.to_markdown(index=False, floatfmt=".3f"),
            "",
            *_two_magnitudes_section(choice),
            *_classifier_section(choice),
        ]
    )


def _two_magnitudes_section(choice: dict) -> list[str]:
    """The `SCANS (tuned, two magnitudes)` row's choice: α for the queries σ(q) calls benign, α_harmful for the others,
    assembled from the grid's responses above (and Default's for 0)."""
    if "two_magnitudes" not in choice:
        return []
    t = choice["two_magnitudes"]
    grid = pd.DataFrame(t["grid"]).rename(columns={"alpha": "alpha_benign"})
    grid["steer_layers"] = grid["steer_layers"].map(lambda ls: f"{ls[0]}-{ls[-1]}")
    return [
        "## SCANS (tuned, two magnitudes): a magnitude for each sign of σ(q)",
        "",
        "Beyond the paper: -α_benign·v on the queries σ(q) calls benign and +α_harmful·v on the others, 0 included,"
        " with the 𝓛 and 𝒯 above. No generation of its own: each prompt's response under its own coefficient is read"
        " from the grid above (Default's for 0).",
        "",
        f"- α_benign = {t['alpha']:g}, α_harmful = {t['alpha_harmful']:g}, steering layers "
        f"{t['steer_layers'][0]}-{t['steer_layers'][-1]}: " + _rule({**choice["validation"], "cap_met": t["cap_met"]}),
        "",
        grid.to_markdown(index=False, floatfmt=".3f"),
        "",
    ]


def _classifier_section(choice: dict) -> list[str]:
    """The harm classifiers compared on the validation split, and the `SCANS + classifier` row's choice."""
    if "classifier" not in choice:
        return []
    c = choice["classifier"]
    compared = pd.DataFrame(
        [{"classifier": x["kind"], "anchors": x["anchors"], "harmful anchors": x["fit"]["harmful"],
          "benign anchors": x["fit"]["benign"], "𝓛": f"{x['layers'][0]}-{x['layers'][-1]}", "𝒯": x["threshold"],
          "AUROC": x["auroc"], "balanced accuracy": x["balanced_accuracy"]} for x in choice["classifiers"]]
    )  # fmt: skip
    grid = pd.DataFrame(c["grid"])
    grid["steer_layers"] = grid["steer_layers"].map(lambda ls: f"{ls[0]}-{ls[-1]}")
    return [
        "## SCANS + classifier: the harm classifiers on the validation split",
        "",
        "Every classifier x anchor set of `classify.compare` (scans/steering/harm.py), with its window 𝓛 (best AUROC)"
        " and threshold 𝒯 (best balanced accuracy) chosen here.",
        "",
        compared.to_markdown(index=False, floatfmt=".3f"),
        "",
        f"- classifier (`classify.use={c['use']}`): {c['kind']} on the {c['anchors']} anchors, 𝓛 = "
        f"{c['layers'][0]}-{c['layers'][-1]}, 𝒯 = {c['threshold']:.4f}, AUROC {c['auroc']:.3f}",
        f"- α = {c['alpha']:g}, steering layers {c['steer_layers'][0]}-{c['steer_layers'][-1]}: "
        + _rule({**choice["validation"], "cap_met": c["cap_met"]}),
        "",
        grid.to_markdown(index=False, floatfmt=".3f"),
        "",
    ]
