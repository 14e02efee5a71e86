"""Table 1, Table 7 (classification side), Figures 4 and 5 and the refusal-score plot, from the analysis artifacts."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from scans.analysis.classifiers import TABLE7_SETS  # noqa: E402

# Reference §3.4 (Llama2-7b-chat; "_" marks a SentencePiece word start).
PAPER_TABLE1 = [
    ["former", "0-9", "einges, _schließ, vue, che, orio, _Syd, rugu, wrap, widet, axi"],
    ["middle", "10-20", "_rejected, _impossible, zas, _cons, ball, od, lio, _tur, _reject, _cannot"],
    ["latter", "21-31", "sey, Mas, _Coun, Ir, -ext, -properties, Seg, ber, ds, _sa"],
]
# Reference §3.11: the share of each set σ(q) classifies harmful is not in the paper; its refusal rates are.
PAPER_TABLE7 = {
    "threshold": [0.80, 0.75, 0.70, 0.65, 0.60],
    "xstest_safe": [3.60, 9.20, 33.20, 46.00, 65.20],
    "xstest_unsafe": [71.00, 93.50, 99.50, 99.50, 100.0],
    "oktest": [0.0, 0.33, 8.33, 33.67, 50.00],
    "malicious": [94.00, 98.00, 100.0, 100.0, 100.0],
    "truthfulqa": [0.13, 0.80, 5.71, 10.49, 25.23],
    "advbench": [99.12, 99.34, 99.56, 100.0, 100.0],
}




def _clean(token: str) -> str:
    return token.replace("Ġ", "_").replace("▁", "_").replace("Ċ", "\\n").replace("|", "\\|")


def table1(result: Mapping) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "segment": s["segment"],
                "layers": s["layers"],
                "top_tokens": ", ".join(_clean(t) for t in s["top_tokens"]),
                "refusal_score": s["refusal_score"],
            }
            for s in result["segments"]
        ]
    )


def table1_markdown(df: pd.DataFrame, result: Mapping, model: str) -> str:
    paper = pd.DataFrame(PAPER_TABLE1, columns=["segment", "layers", "top_tokens"])
    return "\n".join(
        [
            f"# Table 1: top tokens of each segment's steering direction (`{model}`)",
            "",
            "First PCA component of the segment's unit refusal vectors (signed to agree with their mean), through the "
            "final norm's gain and the LM head. `_` marks a word-initial space. Refusal score: mean z-score of the "
            "refusal lexicon's tokens among all logits (> 0: promoted).",
            "",
            df.to_markdown(index=False, floatfmt=".2f"),
            "",
            f"Steering layers the per-layer refusal score suggests: {_span(result['suggested_steer_layers'])} "
            "(used only with `steer.layers=anchor`). Per-layer scores: `refusal_score.png`.",
            "",
            "The paper's Llama2-7b-chat (reference §3.4):",
            "",
            paper.to_markdown(index=False),
            "",
        ]
    )


def _span(layers) -> str:
    return f"{layers[0]}-{layers[-1]}"


def refusal_score_figure(result: Mapping, path: Path, model: str) -> None:
    scores = result["layer_refusal_score"]
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(range(len(scores)), scores, marker="o", ms=3)
    for seg in result["segments"]:
        lo, hi = (int(x) for x in seg["layers"].split("-"))
        ax.axvspan(lo - 0.5, hi + 0.5, alpha=0.08 if seg["segment"] != "middle" else 0.18, color="tab:gray")
        ax.text((lo + hi) / 2, max(scores), seg["segment"], ha="center", va="bottom", fontsize=8)
    ax.axhline(0, color="black", lw=0.5)
    ax.set_xlabel("layer")
    ax.set_ylabel("refusal score (mean z of refusal tokens)")
    ax.set_title(f"Refusal score per layer: does the layer's refusal vector promote refusal tokens?\n({model})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figure4(result: Mapping, path: Path, model: str) -> None:
    names = [c["classifier"] for c in result["classifiers"]]
    metrics = ("precision", "recall", "f1")
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.26
    for j, metric in enumerate(metrics):
        values = [c[metric] for c in result["classifiers"]]
        bars = ax.bar([i + (j - 1) * width for i in range(len(names))], values, width, label=metric.capitalize())
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=8)
    ax.set_ylim(0, 1.08)
    ax.set_ylabel("score (harmful = positive class)")
    n = result["n"]
    ax.set_title(f"Figure 4: detecting harmful queries on XSTest\n({n['unsafe']} unsafe, {n['safe']} safe; {model})")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figure5(result: Mapping, path: Path, model: str) -> None:
    f = result["figure5"]
    layers = range(len(f["auroc"]))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for name, color in (("safe", "tab:blue"), ("unsafe", "tab:red")):
        mean = pd.Series(f[f"{name}_mean"])
        sd = pd.Series(f[f"{name}_sd"])
        ax1.plot(layers, mean, color=color, label=f"{name} XSTest")
        ax1.fill_between(layers, mean - sd, mean + sd, color=color, alpha=0.15)
    ax1.set_xlabel("layer")
    ax1.set_ylabel("cosine similarity to d_harm (mean ± sd)")
    ax1.set_title("Transition similarity per layer")
    ax1.legend()
    ax2.plot(layers, f["auroc"], color="black", marker="o", ms=3)
    ax2.axhline(0.5, color="gray", ls="--", lw=0.8)
    ax2.set_ylim(0.3, 1.0)
    ax2.set_xlabel("layer")
    ax2.set_ylabel("AUROC (unsafe vs safe)")
    ax2.set_title("Separation per layer")
    fig.suptitle(f"Figure 5: choice of classification layers ({model})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figure4_table(result: Mapping) -> pd.DataFrame:
    return pd.DataFrame(result["classifiers"], columns=["classifier", "precision", "recall", "f1", "accuracy"])


def table7_grid(result: Mapping) -> pd.DataFrame:
    """Every 𝒯 of the fine grid, in the paper's row order (fixed columns: the artifact's keys are sorted)."""
    return pd.DataFrame(result["table7_classification"], columns=["threshold", *TABLE7_SETS, "xstest_f1"])


def table7(result: Mapping, paper_thresholds) -> pd.DataFrame:
    """The classification side at the paper's thresholds: % of each set that σ(q) classifies harmful."""
    df = table7_grid(result)
    return df[df["threshold"].round(2).isin([round(t, 2) for t in paper_thresholds])].sort_values(
        "threshold", ascending=False
    )


def table7_markdown(df: pd.DataFrame, full: pd.DataFrame, result: Mapping, model: str) -> str:
    best = full.loc[full["xstest_f1"].idxmax()]
    lines = [
        f"# Table 7 (classification side): share of each set that σ(q) classifies harmful, by 𝒯 (`{model}`)",
        "",
        f"σ(q) with the paper recipe's 𝓛 = {_span(result['table7_layers'])}; from the cached similarities, no "
        "generation. Refusal rates at these 𝒯 need generation and are not in this table yet.",
        "",
        df.to_markdown(index=False, floatfmt=".2f"),
        "",
        f"On the fine grid (0.50-1.00, step 0.01; `table7_grid.csv`) the best XSTest F1 is {best['xstest_f1']:.3f} "
        f"at 𝒯 = {best['threshold']:.2f} (a test-set figure, not a choice). The default 𝒯 of the tuned row comes from "
        f"the {result['default_threshold_source']}"
        + (f": 𝒯 = {result['tuned_threshold']:.3f}." if "tuned_threshold" in result else "."),
        "",
        "The paper's Llama2-7b-chat refusal rates (%) at these 𝒯 (reference §3.11):",
        "",
        pd.DataFrame(PAPER_TABLE7).to_markdown(index=False, floatfmt=".2f"),
        "",
    ]
    return "\n".join(lines)
