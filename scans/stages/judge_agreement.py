"""Stage `judge_agreement`: how often the refusal judge agrees with XSTest's human labels (5 models x 450)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from scans.artifacts import write_text_atomic
from scans.data import load_table
from scans.judge import get_judge
from scans.judge.agreement import agreement
from scans.report.uncertainty import interval, wilson
from scans.stages.context import Run


def run(r: Run) -> pd.DataFrame:
    judge = get_judge(r.cfg.judge.name)
    table = load_table("xstest_completions")
    rows = []
    for model, df in table.groupby("model", sort=True):
        a = agreement(df, judge)
        rows.append(
            {
                "model": model,
                "n": a["n"],
                "judge_agreement": 100 * a["agreement"],
                "xstest_strmatch_agreement": 100 * a["anchor_agreement"],
                "judge_refusal_rate": 100 * a["judge_refusal_rate"],
                "human_refusal_rate": 100 * a["human_refusal_rate"],
            }
        )
    out = pd.DataFrame(rows)
    mean = out.drop(columns=["model"]).mean(numeric_only=True)
    out.loc[len(out)] = {"model": "mean", **mean.to_dict(), "n": int(out["n"].sum())}
    # 95% Wilson interval of the agreement (the mean row: pooled over the five models' equal-sized sets).
    out["judge_agreement_95ci"] = [
        interval(*wilson(round(a * n / 100), n)) for a, n in zip(out["judge_agreement"], out["n"])
    ]
    dest = Path(r.cfg.paths.report)
    write_text_atomic(dest / "judge_agreement.csv", out.to_csv(index=False, float_format="%.2f"))
    md = [
        f"# Refusal judge `{r.cfg.judge.name}` against XSTest human labels",
        "",
        "Agreement (%) with the final human label of XSTest v2 completions; partial refusal counts as refusal.",
        "The anchor is the XSTest authors' own string matcher on the same completions (80.9-93.6%, mean 88.4%).",
        "",
        out.to_markdown(index=False, floatfmt=".1f"),
        "",
    ]
    write_text_atomic(dest / "judge_agreement.md", "\n".join(md))
    print(out.to_string(index=False, float_format=lambda x: f"{x:.1f}"))
    return out
