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
            + ", ".join(f"{k} {n}" for k, n in v["sets"].items()) + ".",
            "",
            f"- classification layers 𝓛 = {layers[0]}-{layers[-1]}: validation AUROC {v['classifier_auroc']:.3f}"
            f" (paper recipe's 𝓛: {v['paper_recipe_auroc']:.3f})",
            f"- threshold 𝒯 = {choice['threshold']:.4f}: balanced accuracy {v['classifier_balanced_accuracy']:.3f}",
            f"- α = {choice['alpha']:g}, steering layers {choice['steer_layers'][0]}-{choice['steer_layers'][-1]}: "
            + _rule(v),
            "",
            "## Behaviour grid (refusal rate on a validation subset of "
            + ", ".join(f"{n} {k}" for k, n in v["generation_subset"].items()) + " prompts)",
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
        ]
    )
