"""Table 1, Table 7 (classification side), Figures 4 and 5 and the refusal-score plot, from the analysis artifacts."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from transformers.convert_slow_tokenizer import bytes_to_unicode  # noqa: E402

# Reference §3.4 (Llama2-7b-chat; "_" marks a SentencePiece word start).
PAPER_TABLE1 = [
    ["former", "0-9", "einges, _schließ, vue, che, orio, _Syd, rugu, wrap, widet, axi"],
    ["middle", "10-20", "_rejected, _impossible, zas, _cons, ball, od, lio, _tur, _reject, _cannot"],
    ["latter", "21-31", "sey, Mas, _Coun, Ir, -ext, -properties, Seg, ber, ds, _sa"],
]


_BYTES = {c: b for b, c in bytes_to_unicode().items()}  # byte-level BPE's printable alphabet (GPT-2, Qwen, SmolLM2)


def _clean(token: str) -> str:
    """A vocabulary entry as text: byte-level BPE's bytes decoded (Qwen's Cyrillic and CJK tokens are bytes spelt
    in its alphabet), a word-initial space or SentencePiece "▁" as "_"; an entry that is part of a character stays
    as spelt."""
    try:
        token = bytes(_BYTES[c] for c in token).decode("utf-8").replace(" ", "_").replace("\n", "\\n")
    except (KeyError, UnicodeDecodeError):
        token = token.replace("Ġ", "_").replace("▁", "_").replace("Ċ", "\\n")
    return token.replace("|", "\\|")


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
            f"Steering layers the per-layer refusal score suggests: {span(result['suggested_steer_layers'])} "
            "(used only with `steer.layers=anchor`). Per-layer scores: `refusal_score.png`.",
            "",
            "The paper's Llama2-7b-chat (reference §3.4):",
            "",
            paper.to_markdown(index=False),
            "",
        ]
    )


def span(layers) -> str:
    """ "a-b" for a contiguous block of layers, else the list."""
    layers = list(layers)
    return f"{layers[0]}-{layers[-1]}" if layers == list(range(layers[0], layers[-1] + 1)) else str(layers)


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


def figure4_entries(result: Mapping) -> list[Mapping]:
    """σ(q) of the SCANS row, the keyword filter, and each kind's validated-best classifier."""
    return [c for c in result["classifiers"] if c.get("row") or c.get("kind") == "keyword" or c.get("validated_best")]


def figure4(result: Mapping, path: Path, model: str) -> None:
    entries = figure4_entries(result)
    names = [c["classifier"] for c in entries]
    metrics = ("precision", "recall", "f1", "auroc")
    fig, ax = plt.subplots(figsize=(max(8, 1.7 * len(names)), 4.2))
    width = 0.2
    for j, metric in enumerate(metrics):
        values = [c[metric] for c in entries]
        offset = (j - (len(metrics) - 1) / 2) * width
        bars = ax.bar([i + offset for i in range(len(names))], values, width, label=metric.upper() if j == 3
                      else metric.capitalize())  # fmt: skip
        ax.bar_label(bars, fmt="%.2f", fontsize=6)
    ax.set_xticks(range(len(names)), [n.replace(" (", "\n(") for n in names], fontsize=7)
    ax.set_ylim(0, 1.1)
    ax.set_ylabel("score (harmful = positive class)")
    n = result["n"]
    ax.set_title(
        f"Figure 4: detecting harmful queries on XSTest ({n['unsafe']} unsafe, {n['safe']} safe; {model})\n"
        "layers, threshold and anchors chosen on the validation split"
    )
    ax.legend(loc="upper left", fontsize=7, ncol=4)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def figure5(result: Mapping, path: Path, model: str) -> None:
    f = result["figure5"]
    layers = range(len(f["auroc"]))
    kinds = list(dict.fromkeys(c["kind"] for c in result["classifiers"] if "per_layer_auroc" in c))
    fig, axes = plt.subplots(2, 3, figsize=(14, 7.5))
    ax1 = axes[0, 0]
    for name, color in (("safe", "tab:blue"), ("unsafe", "tab:red")):
        mean = pd.Series(f[f"{name}_mean"])
        sd = pd.Series(f[f"{name}_sd"])
        ax1.plot(layers, mean, color=color, label=f"{name} XSTest")
        ax1.fill_between(layers, mean - sd, mean + sd, color=color, alpha=0.15)
    ax1.set_xlabel("layer")
    ax1.set_ylabel("cosine similarity to d_harm (mean ± sd)")
    ax1.set_title("σ(q): transition similarity per layer")
    ax1.legend(fontsize=8)
    panels = [axes[0, 1], axes[0, 2], axes[1, 0], axes[1, 1], axes[1, 2]]
    panels[-1].plot(layers, f["auroc"], color="black", marker="o", ms=3)
    panels[-1].set_title("σ(q) (steering anchors): XSTest AUROC per layer")
    for ax, kind in zip(panels, kinds):
        for i, c in enumerate(x for x in result["classifiers"] if x.get("kind") == kind and "per_layer_auroc" in x):
            color = f"C{i}"
            ax.plot(layers, c["per_layer_auroc"], color=color, marker="o", ms=2, label=f"{c['anchors']} (XSTest)")
            ax.plot(layers, c["validation_per_layer_auroc"], color=color, ls=":", lw=1, label=f"{c['anchors']} (val.)")
        ax.set_title(f"{kind}: AUROC per layer")
        ax.legend(fontsize=6, ncol=2)
    for ax in panels:
        ax.axhline(0.5, color="gray", ls="--", lw=0.8)
        ax.set_ylim(0.3, 1.0)
        ax.set_xlabel("layer")
        ax.set_ylabel("AUROC (unsafe vs safe)")
    fig.suptitle(f"Figure 5: per-layer separation of every classifier and anchor set ({model})")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def table7_grid(result: Mapping, sets: Sequence[str]) -> pd.DataFrame:
    """Every 𝒯 of the fine grid, the sets in `sets`' order (fixed columns: the artifact's keys are sorted)."""
    return pd.DataFrame(result["table7_classification"], columns=["threshold", *sets, "xstest_f1"])


def table7_shares(df: pd.DataFrame, thresholds) -> pd.DataFrame:
    """The classification side (`table7_grid`) at the given thresholds: % of each set that σ(q) classifies harmful."""
    keep = df["threshold"].map(lambda t: any(abs(t - x) < 1e-9 for x in thresholds))
    return df[keep].sort_values("threshold", ascending=False)


def signs_markdown(result: Mapping, table1: pd.DataFrame, model: str) -> str:
    """The sign probe (`analyze.sign_effects`): refusal under +α·v and -α·v per layer block and per positions policy,
    beside each block's refusal score and Table 1's tokens."""
    rows = pd.DataFrame(result["rows"])
    default = rows[rows["sign"] == 0].iloc[0]
    rows = rows[rows["sign"] != 0].copy()
    rows["layers"] = rows["layers"].map(span)
    for lab in ("harmful", "benign"):
        rows[f"{lab} Δ"] = 100 * (rows[lab] - default[lab])
        rows[lab] = 100 * rows[lab]
    rows["harmful_structured"] = 100 * rows["harmful_structured"]
    rows["sign"] = rows["sign"].map({1: "+v", -1: "-v"})
    cols = ["sign", "harmful", "harmful Δ", "benign", "benign Δ", "harmful_structured"]
    blocks, positions = rows[rows["probe"] == "block"], rows[rows["probe"] == "positions"]
    head, n = span(result["steer_layers"]), result["n"]
    vectors = "unit refusal vectors" if result.get("normalize", True) else "the unnormalised mean differences"
    lines = [
        f"# Which way v pushes refusal (`{model}`)",
        "",
        f"Every row of a validation subset ({n['harmful']} harmful, {n['benign']} benign prompts, never a reported "
        f"one) steered by +α·v or by -α·v, α = {result['alpha']:g} on {vectors}, judged by `judge.fit`. "
        "SCANS adds +α·v where σ(q) says harmful and -α·v elsewhere: its recipe assumes that +v raises refusal and -v "
        f"lowers it. Unsteered: harmful {100 * default['harmful']:.1f}%, benign {100 * default['benign']:.1f}%; "
        f"harmful prompts answered in a task's form {100 * default['harmful_structured']:.1f}%.",
        "",
        "Rates in %; Δ in points against unsteered; `harmful_structured`: the harmful prompts whose answer is laid out"
        " as a task (headings, lists, steps; scans/analysis/signs.py); `refusal_score`: the block's mean per-layer "
        "refusal score of Table 1's anchoring (> 0: the vectors promote refusal tokens through the unembedding).",
        "",
        "## Summary (computed from the tables below)",
        "",
        *_sign_summary(blocks),
        "",
        f"## Layer by layer (blocks, positions `{blocks['positions'].iloc[0]}`)",
        "",
        blocks[["layers", *cols, "refusal_score"]].to_markdown(index=False, floatfmt=".1f"),
        "",
        f"## The positions policy, on the headline's ({result['method']}) steering layers {head}",
        "",
        positions[["positions", *cols]].to_markdown(index=False, floatfmt=".1f"),
        "",
        "## Table 1's tokens per segment",
        "",
        table1.to_markdown(index=False, floatfmt=".2f"),
        "",
        f"## Harmful validation prompts' answers, unsteered and under ±α·v on {head}",
        "",
    ]
    for e in result["examples"]:
        title = "unsteered" if e["sign"] == 0 else f"{'+' if e['sign'] > 0 else '-'}α·v"
        lines += [f"**{title}**", "", *(f"- {text.strip()[:200]!r}" for text in e["responses"]), ""]
    return "\n".join(lines)


def _sign_summary(blocks: pd.DataFrame) -> list[str]:
    """Which blocks move harmful refusal and the task form of the answers which way, and which promote refusal
    tokens: the sign probe's findings in words, from its rows."""

    def where(sign: str, column: str, up: bool) -> str:
        rows = blocks[blocks["sign"] == sign]
        rows = rows[rows[column] > 0] if up else rows[rows[column] < 0]
        return ", ".join(f"{r.layers} ({r[column]:+.1f})" for _, r in rows.iterrows()) or "none"

    plus = blocks[blocks["sign"] == "+v"].set_index("layers")
    minus = blocks[blocks["sign"] == "-v"].set_index("layers")
    form = (plus["harmful_structured"] - minus["harmful_structured"]).round(1)
    promoting = [b for b, x in plus["refusal_score"].items() if x > 0]
    return [
        f"- +v raises harmful refusal on {where('+v', 'harmful Δ', True)}; lowers it on "
        f"{where('+v', 'harmful Δ', False)} (points).",
        f"- -v lowers harmful refusal on {where('-v', 'harmful Δ', False)}; raises it on "
        f"{where('-v', 'harmful Δ', True)}.",
        "- Task-form answers to harmful prompts, +v minus -v (points): "
        + ", ".join(f"{b} {x:+.1f}" for b, x in form.items())
        + ".",
        f"- Blocks whose vectors promote refusal tokens (refusal score > 0): {', '.join(promoting) or 'none'}.",
    ]
