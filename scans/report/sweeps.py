"""Tables 5, 6 and 7 (refusal side): one row per value of the varied hyperparameter, beside the paper's numbers.

The CSVs keep one row per (model, value), so a rerun for one model replaces only its rows; the Markdown shows our
rows in the paper's orientation (Tables 6-7: the sets as rows, the values as columns). Our rows cover `sweep.sets`
(the paper's six by default), laid out as Table 2's columns are; the paper's rows keep its own six sets.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from scans.data import BENIGN, HARMFUL
from scans.report.table2 import Layout, intervals
from scans.report.uncertainty import interval

# The paper's Tables 6-7 row order (reference §3.10-3.11); its Avg. pools these six sets (RepE excluded).
PAPER = Layout(
    labels={"xstest_safe": BENIGN, "xstest_unsafe": HARMFUL, "oktest": BENIGN, "malicious": HARMFUL,
            "truthfulqa": BENIGN, "advbench": HARMFUL},
    averages={"xstest_avg": ("xstest_safe", "xstest_unsafe"),
              "avg": ("xstest_safe", "xstest_unsafe", "oktest", "malicious", "truthfulqa", "advbench")},
)  # fmt: skip
TABLE5_LEAD = ["model", "segment", "layers", "wikitext2_ppl", "c4_ppl"]
# The order of PAPER_TABLE5's values (the paper's Table 5 columns).
PAPER_TABLE5_COLUMNS = [*TABLE5_LEAD, "xstest_safe", "xstest_unsafe", "xstest_avg", "oktest", "truthfulqa", "advbench",
                        "malicious", "avg"]  # fmt: skip
NAN = float("nan")
# Reference §3.9: refusal rates for former-layer steering are not reported (the text is incoherent).
PAPER_TABLE5 = [
    ["Llama2-7b-chat (paper)", "former", "0-9", 2946, 3058, *[NAN] * 8],
    ["Llama2-7b-chat (paper)", "middle", "10-20", 9.32, 11.94, 9.20, 93.50, 92.00, 0.33, 0.80, 99.34, 100.0, 97.76],
    ["Llama2-7b-chat (paper)", "latter", "21-31", 8.15, 10.37, 12.00, 95.00, 91.11, 7.00, 0.27, 98.90, 98.00, 96.59],
    ["vicuna-7b-v1.5 (paper)", "former", "0-9", 15433, 11457, *[NAN] * 8],
    ["vicuna-7b-v1.5 (paper)", "middle", "10-20", 11.53, 15.32, 5.60, 87.00, 91.11, 3.00, 0.00, 98.96, 98.00, 97.29],
    ["vicuna-7b-v1.5 (paper)", "latter", "21-31", 7.85, 9.89, 7.60, 83.50, 88.44, 2.33, 1.46, 93.42, 92.00, 94.75],
]
# Reference §3.10 (α = 2.0 is the inferred header of the second column).
PAPER_TABLE6 = {
    "alpha": [1.5, 2.0, 2.5, 3.0, 3.5, 4.0],
    "xstest_safe": [9.60, 10.40, 10.80, 10.80, 9.20, 10.40],
    "xstest_unsafe": [91.00, 91.50, 94.00, 94.00, 93.50, 93.50],
    "oktest": [7.00, 3.33, 1.00, 0.33, 0.33, 0.33],
    "malicious": [100.0, 100.0, 100.0, 100.0, 100.0, 100.0],
    "truthfulqa": [0.93, 1.06, 0.80, 0.80, 0.80, 0.93],
    "advbench": [99.12, 99.12, 99.12, 99.12, 99.34, 99.34],
    "avg": [96.41, 96.85, 97.47, 97.57, 97.76, 97.57],
}
# Reference §3.11 (Malicious at 0.80 is inferred from the printed Avg.).
PAPER_TABLE7 = {
    "threshold": [0.80, 0.75, 0.70, 0.65, 0.60],
    "xstest_safe": [3.60, 9.20, 33.20, 46.00, 65.20],
    "xstest_unsafe": [71.00, 93.50, 99.50, 99.50, 100.0],
    "oktest": [0.0, 0.33, 8.33, 33.67, 50.00],
    "malicious": [94.00, 98.00, 100.0, 100.0, 100.0],
    "truthfulqa": [0.13, 0.80, 5.71, 10.49, 25.23],
    "advbench": [99.12, 99.34, 99.56, 100.0, 100.0],
    "avg": [96.21, 97.67, 92.52, 85.62, 75.57],
}


def intervals_markdown(labelled: Sequence[tuple[str, Mapping[str, tuple[int, int]]]], lay: Layout) -> str:
    """The 95% Wilson interval (%) of every rate of a sweep table: one column per value, one row per set."""
    if not labelled:
        return ""
    cols = {label: {c: interval(*ci) for c, ci in intervals(counts, lay).items()} for label, counts in labelled}
    return "\n95% Wilson intervals (%) of the rates above:\n\n" + pd.DataFrame(cols).to_markdown() + "\n"


def table5(rows: Sequence[dict], lay: Layout) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=[*TABLE5_LEAD, *lay.columns])


def table6(rows: Sequence[dict], lay: Layout) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["model", "alpha", *lay.sets, "avg"])


def table7(rows: Sequence[dict], lay: Layout) -> pd.DataFrame:
    return pd.DataFrame(rows, columns=["model", "threshold", *lay.sets, "avg", "xstest_f1"])


def _paper_orientation(df: pd.DataFrame, by: str, label: str, lay: Layout) -> str:
    """Sets as rows, the values of `by` as columns (the paper's layout of Tables 6-7)."""
    cols = [c for c in [*lay.sets, "avg"] if c in df.columns]
    t = df.set_index(by)[cols].T
    t.columns = [f"{label}={v:g}" for v in t.columns]
    t.index = [f"{c} {'↓' if c in lay.safe else '↑'}" for c in t.index]
    return t.to_markdown(floatfmt=".2f")


def _missing(missing: Sequence[str], command: str) -> list[str]:
    if not missing:
        return []
    return ["", f"Not generated yet: {', '.join(missing)} (`{command}`, or `make sweeps`)."]


def table5_markdown(
    df: pd.DataFrame, lay: Layout, model: str, headline: str, sizes: str, missing: Sequence[str]
) -> str:
    return "\n".join(
        [
            f"# Table 5: steering the former, middle or latter layers (`{model}`)",
            "",
            f"{headline} with its steering layers replaced by each segment (`analysis.segments`); perplexity with "
            f"σ(q)-signed steering of each passage (Table 3's protocol), refusal rates (%) on {sizes}. "
            "Avg. pools the sets shown (`sweep.sets`; the paper's six, RepE excluded, by default).",
            "",
            df.to_markdown(index=False, floatfmt=".2f"),
            *_missing(missing, "python -m scans -m stage=sweep sweep.vary=layers steer.layers=former,middle,latter"),
            "",
            "The paper (reference §3.9; refusal rates of former-layer steering are not reported, its text is "
            "incoherent):",
            "",
            table5([dict(zip(PAPER_TABLE5_COLUMNS, row)) for row in PAPER_TABLE5], PAPER).to_markdown(
                index=False, floatfmt=".2f", missingval="–"
            ),
            "",
        ]
    )


def table6_markdown(
    df: pd.DataFrame, lay: Layout, model: str, headline: str, sizes: str, missing: Sequence[str]
) -> str:
    return "\n".join(
        [
            f"# Table 6: refusal rate (%) by the multiplier α (`{model}`)",
            "",
            f"{headline} with α replaced; refusal rates on {sizes}; Avg. pools the sets shown (`sweep.sets`; the "
            "paper's six, RepE excluded, by default). Steering vectors are unit length, so a model's useful α "
            "scales with its residual stream: the paper's grid is not the organism's range (docs/differences.md).",
            "",
            _paper_orientation(df, "alpha", "α", lay),
            *_missing(missing, "python -m scans -m stage=sweep sweep.vary=alpha steer.alpha=..."),
            "",
            "The paper's Llama2-7b-chat (reference §3.10):",
            "",
            _paper_orientation(pd.DataFrame(PAPER_TABLE6), "alpha", "α", PAPER),
            "",
        ]
    )


def table7_markdown(
    df: pd.DataFrame,
    lay: Layout,
    shares: pd.DataFrame,
    grid: pd.DataFrame,
    model: str,
    headline: str,
    layers: str,
    sizes: str,
    missing: Sequence[str],
    threshold_source: str,
) -> str:
    best = grid.loc[grid["xstest_f1"].idxmax()]
    refusal = (
        [_paper_orientation(df, "threshold", "𝒯", lay)]
        if len(df)
        else ["No refusal rates yet: they need generation (`make sweeps`)."]
    )
    return "\n".join(
        [
            f"# Table 7: refusal rate (%) by the threshold 𝒯 (`{model}`)",
            "",
            f"{headline} with 𝒯 replaced (𝓛 = {layers}); refusal rates on {sizes}; Avg. pools the sets shown "
            "(`sweep.sets`; the paper's six, RepE excluded, by default). A column whose signs σ(q) equal another's "
            "shares its responses.",
            "",
            *refusal,
            *_missing(missing, "python -m scans -m stage=sweep sweep.vary=threshold classify.threshold=..."),
            "",
            "The classification side, from the cached similarities alone (no generation): the share (%) of each set "
            "that σ(q) classifies harmful, and the F1 of σ(q) on all of XSTest (harmful = positive).",
            "",
            shares.to_markdown(index=False, floatfmt=(".4g", *[".2f"] * (shares.shape[1] - 1))),
            "",
            f"On the fine grid (0.50-1.00, step 0.01; `table7_grid.csv`) the best XSTest F1 is {best['xstest_f1']:.3f} "
            f"at 𝒯 = {best['threshold']:.2f} (a test-set figure, not a choice). The headline 𝒯 comes from the "
            f"{threshold_source}.",
            "",
            "The paper's Llama2-7b-chat refusal rates (%) (reference §3.11):",
            "",
            _paper_orientation(pd.DataFrame(PAPER_TABLE7), "threshold", "𝒯", PAPER),
            "",
        ]
    )
