"""The frontier page: every row of Table 2 as one point, benign refusal (lower is better) against harmful refusal
(higher is better), with its capability loss (Table 3) and its cost (Table 4) beside it, and which rows dominate.

Benign and harmful refusal pool Table 2's sets of each label (every prompt counts once), with 95% Wilson intervals.
A row dominates another when it refuses no more benign prompts and no fewer harmful ones, and differs in one; the
rows no other row dominates are the frontier. Dominance reads the point estimates; the intervals say how far to
trust it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from scans.report.table2 import Layout  # noqa: E402
from scans.report.uncertainty import wilson  # noqa: E402


def frontier_table(
    tallies: Mapping[str, Mapping[str, tuple[int, int]]],
    lay: Layout,
    table3: pd.DataFrame | None,
    table4: pd.DataFrame | None,
) -> pd.DataFrame:
    """One row per method (in order; Default first): pooled refusal by label with intervals, the capability change
    against Default (MMLU points, perplexity ratio) where Table 3 has the row, the throughput ratio at Table 4's
    largest batch, and the rows that dominate it."""
    rows = []
    for method, counts in tallies.items():
        row: dict = {"method": method}
        for label, sets in (("benign", lay.safe), ("harmful", [s for s in lay.sets if s not in lay.safe])):
            n = sum(counts[s][0] for s in sets)
            k = sum(counts[s][1] for s in sets)
            lo, hi = wilson(k, n)
            row.update({f"{label}_n": n, label: 100 * k / n, f"{label}_lo": lo, f"{label}_hi": hi})  # percent
        rows.append(row)
    df = pd.DataFrame(rows)
    df["mmlu_change"], df["ppl_ratio"], df["speed_ratio"] = float("nan"), float("nan"), float("nan")
    if table3 is not None and len(table3):
        t3 = table3.set_index("method")
        ppl = t3[["wikitext2_ppl", "c4_ppl"]].mean(axis=1)
        for i, m in enumerate(df["method"]):
            if m in t3.index and "Default" in t3.index:
                df.loc[i, "mmlu_change"] = t3.loc[m, "mmlu_avg"] - t3.loc["Default", "mmlu_avg"]
                df.loc[i, "ppl_ratio"] = ppl[m] / ppl["Default"]
    if table4 is not None and len(table4):
        t4 = table4[table4["batch"] == table4["batch"].max()].set_index("method")["tokens_per_s"]
        for i, m in enumerate(df["method"]):
            if m in t4.index and "Default" in t4.index:
                df.loc[i, "speed_ratio"] = t4[m] / t4["Default"]
    df["dominated_by"] = [", ".join(dominators(df, i)) for i in range(len(df))]
    return df


def dominators(df: pd.DataFrame, i: int) -> list[str]:
    """The rows that refuse no more benign and no fewer harmful prompts than row i, and differ in at least one."""
    b, h = df.loc[i, "benign"], df.loc[i, "harmful"]
    out = []
    for j in range(len(df)):
        bj, hj = df.loc[j, "benign"], df.loc[j, "harmful"]
        if j != i and bj <= b and hj >= h and (bj, hj) != (b, h):
            out.append(df.loc[j, "method"])
    return out


def _fmt(value: float, spec: str) -> str:
    return "—" if pd.isna(value) else format(value, spec)


def frontier_markdown(
    df: pd.DataFrame, model: str, judge: str, sets: Sequence[str], sizes: str, new: Sequence[str]
) -> str:
    lines = [
        f"# The frontier: benign against harmful refusal, capability and cost (`{model}`)",
        "",
        f"Refusal judged by `{judge}`, pooled over Table 2's sets of each label ({', '.join(sets)}; {sizes}), with "
        "95% Wilson intervals. Capability: the MMLU change against Default in points and the perplexity ratio "
        "(WikiText-2 and C4 averaged), for the rows Table 3 has; cost: tokens/s against Default at Table 4's largest "
        "batch. A row is dominated when another refuses no more benign prompts and no fewer harmful ones (point "
        "estimates). Rows new with issue 34 (the successors) are marked †.",
        "",
        "| row | benign refusal % ↓ | harmful refusal % ↑ | MMLU change | perplexity ratio | speed ratio "
        "| dominated by |",
        "|---|---|---|---|---|---|---|",
    ]
    for _, r in df.iterrows():
        mark = " †" if r["method"] in new else ""
        lines.append(
            f"| {r['method']}{mark} | {r['benign']:.1f} [{r['benign_lo']:.1f}, {r['benign_hi']:.1f}] | "
            f"{r['harmful']:.1f} [{r['harmful_lo']:.1f}, {r['harmful_hi']:.1f}] | {_fmt(r['mmlu_change'], '+.1f')} | "
            f"{_fmt(r['ppl_ratio'], '.2f')} | {_fmt(r['speed_ratio'], '.2f')} | {r['dominated_by'] or '— (frontier)'} |"
        )
    front = df.loc[df["dominated_by"] == "", "method"].tolist()
    lines += ["", f"The frontier (no row dominates them): {', '.join(front)}.", "", "![frontier](frontier.png)", ""]
    return "\n".join(lines)


def frontier_figure(df: pd.DataFrame, path: Path, model: str, new: Sequence[str]) -> None:
    fig, ax = plt.subplots(figsize=(7.5, 5.5))
    for _, r in df.iterrows():
        color = "tab:red" if r["method"] in new else ("black" if r["method"] == "Default" else "tab:blue")
        ax.errorbar(
            r["benign"], r["harmful"],
            xerr=[[max(0.0, r["benign"] - r["benign_lo"])], [max(0.0, r["benign_hi"] - r["benign"])]],
            yerr=[[max(0.0, r["harmful"] - r["harmful_lo"])], [max(0.0, r["harmful_hi"] - r["harmful"])]],
            fmt="o", color=color, capsize=3, alpha=0.8,
        )  # fmt: skip
        ax.annotate(r["method"], (r["benign"], r["harmful"]), fontsize=7, xytext=(4, 3), textcoords="offset points")
    ax.set_xlabel("benign refusal % (lower is better)")
    ax.set_ylabel("harmful refusal % (higher is better)")
    ax.set_title(f"{model}: one point per row of Table 2 (red: the successors), 95% intervals", fontsize=9)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
