"""Stage `judge_agreement`: how often each registered refusal judge agrees with XSTest's human labels (5 models
x 450 completions, partial refusal = refusal).

Rule judges are scored on every row as they are. A learned judge is never scored on rows it trained on: leave one
model out (trained on four models' completions, scored on the fifth), and stricter, leave one model out grouped by
prompt (the scored completions' prompts and their near duplicates are also absent from training).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from scans.artifacts import write_text_atomic
from scans.data import load_table
from scans.judge import JUDGES, get_judge
from scans.judge.agreement import scores
from scans.judge.learned import cross_validate
from scans.report.uncertainty import interval, wilson
from scans.stages.context import Run

PROTOCOLS = {
    "all rows": "the judge as it is, on every completion (it learned nothing from them)",
    "leave one model out": "trained on the other four models' completions, scored on the fifth",
    "leave one model out, by prompt": (
        "as leave one model out, and the scored completions' prompts and their near duplicates absent from"
        " training (folds of prompt groups per held-out model, as the reported-set cross-fitting deals them)"
    ),
}


def verdicts(name: str, table: pd.DataFrame) -> dict[str, list[bool]]:
    """Each protocol's out-of-sample verdicts of judge `name` on every row of `table`, in order."""
    judge = get_judge(name)
    settings = getattr(judge, "settings", None)
    if settings is None:
        return {"all rows": [bool(judge(t)) for t in table["completion"].fillna("").astype(str)]}
    return {
        "leave one model out": list(cross_validate(table, settings)[0]),
        "leave one model out, by prompt": list(cross_validate(table, settings, by_prompt=True)[0]),
    }


def agreement_table(table: pd.DataFrame, judges: list[str], selected: str) -> pd.DataFrame:
    """One row per judge x protocol x model (and the mean over models): agreement (%) with its 95% Wilson
    interval, and the judge's and the humans' refusal rates (%)."""
    rows = []
    table = table.reset_index(drop=True)
    for name in judges:
        for protocol, flags in verdicts(name, table).items():
            per_model = []
            for model, df in table.groupby("model", sort=True):
                s = scores([flags[i] for i in df.index], df["final_label"].tolist())
                per_model.append({"model": model, **s})
            # The mean row: the mean over models; its interval pools the models' equal-sized sets.
            n = sum(s["n"] for s in per_model)
            k = sum(s["agreements"] for s in per_model)
            mean = {
                key: sum(s[key] for s in per_model) / len(per_model)
                for key in ("agreement", "judge_refusal_rate", "human_refusal_rate")
            }
            for s in [*per_model, {"model": "mean", "n": n, "agreements": k, **mean}]:
                rows.append(
                    {
                        "judge": name,
                        "selected": name == selected,
                        "protocol": protocol,
                        "model": s["model"],
                        "n": s["n"],
                        "agreement": 100 * s["agreement"],
                        "agreement_95ci": interval(*wilson(s["agreements"], s["n"])),
                        "judge_refusal_rate": 100 * s["judge_refusal_rate"],
                        "human_refusal_rate": 100 * s["human_refusal_rate"],
                    }
                )
    return pd.DataFrame(rows)


def summary(out: pd.DataFrame) -> pd.DataFrame:
    """One row per judge and protocol: the agreement (%) on each model, and the mean with its interval."""
    rows = []
    for (judge, protocol), df in out.groupby(["judge", "protocol"], sort=False):
        cells = {m: f"{a:.1f}" for m, a in zip(df["model"], df["agreement"]) if m != "mean"}
        mean = df[df["model"] == "mean"].iloc[0]
        rows.append({"judge": f"`{judge}`", "protocol": protocol, **cells,
                     "mean [95% CI]": f"{mean['agreement']:.1f} {mean['agreement_95ci']}"})  # fmt: skip
    return pd.DataFrame(rows)


def run(r: Run) -> pd.DataFrame:
    selected = r.cfg.judge.name
    get_judge(selected)  # an unknown configured judge is a config error before any scoring
    out = agreement_table(load_table("xstest_completions"), sorted(JUDGES), selected)
    dest = Path(r.cfg.paths.report)
    write_text_atomic(dest / "judge_agreement.csv", out.to_csv(index=False, float_format="%.2f"))
    means = out[out["model"] == "mean"].set_index(["judge", "protocol"])["agreement"]
    md = [
        "# Refusal judges against XSTest human labels",
        "",
        f"The config selects `judge={selected}`. Agreement (%) with the final human label of the XSTest v2 model",
        "completions, partial refusal counted as refusal; 95% Wilson intervals; refusal rates (%) of the judge and",
        "of the humans. The mean row averages the models (its interval pools their rows).",
        "",
        "Protocols:",
        *(f"- *{p}*: {text}" for p, text in PROTOCOLS.items() if p in set(out["protocol"])),
        "",
        "A learned judge's hyperparameters were chosen on these scores of all five models, so they saw each held-out"
        " model during the choice; `python scripts/judge_nested_cv.py [--by-prompt]` redoes the choice blind to it"
        " (nested leave one model out).",
        "",
        "Mean agreement: " + "; ".join(f"`{j}` ({p}) {a:.1f}%" for (j, p), a in means.items()) + ".",
        "",
        summary(out).to_markdown(index=False, disable_numparse=True),
        "",
        "Per model, with the refusal rates:",
        "",
        out.to_markdown(index=False, floatfmt=".1f"),
        "",
    ]
    write_text_atomic(dest / "judge_agreement.md", "\n".join(md))
    print(out.to_string(index=False, float_format=lambda x: f"{x:.1f}"))
    return out
