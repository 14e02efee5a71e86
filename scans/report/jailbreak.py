"""The jailbreak page (issue 35): each row's harmful refusal under each attack, from the `jailbreak` stage's result.

Rates pool the attacked sets (every prompt counts once) with 95% Wilson intervals; a row's difference from Default,
and from its own plain column, is paired over the same prompts (bootstrap). The worst attack of a row is the one with
its lowest refusal by the reporting judge. σ(q) under attack is the share of prompts a SCANS-family row signed +1
(harmful). The two judges' pooled rates are compared per attack; where they differ by more than the set margin,
the responses they disagree on are listed to be read.
"""

from __future__ import annotations

from itertools import islice
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from scans.report.uncertainty import paired_bootstrap, wilson, with_interval  # noqa: E402

PLAIN = "plain"
MARKERS = "osD^vPX*"  # with tab20's colours, no two of up to 40 rows look alike
READ = 20  # responses listed per attack where the judges differ (issue 35: "read 20 of those")


def _pooled(cell: dict, key: str, judge: str | None = None) -> np.ndarray:
    parts = [c["flags"][judge] if judge else c[key] for c in cell.values()]
    return np.concatenate([np.asarray(p, dtype=float) for p in parts]) if parts else np.zeros(0)


def jailbreak_table(result: dict) -> pd.DataFrame:
    """One row per (method, attack), plain first: n, refusal by each judge (percent, with the reporting judge's
    interval), paired differences from Default and from the row's plain column, and σ(q)'s harmful share."""
    judge, *others = result["judges"]
    default = next(row for row in result["rows"] if row["method"] == "Default")
    order = [PLAIN] + [a["name"] for a in result["attacks"]]
    out = []
    for row in result["rows"]:
        plain = _pooled({s: row["cells"][PLAIN][s] for s in result["sets"]}, "flags", judge)
        for attack in order:
            cell = {s: row["cells"][attack][s] for s in result["sets"]}  # the sets in order (the JSON sorts keys)
            flags = _pooled(cell, "flags", judge)
            n, k = len(flags), int(flags.sum())
            lo, hi = wilson(k, n)
            base = {s: default["cells"][attack][s] for s in result["sets"]}
            d = paired_bootstrap(flags, _pooled(base, "flags", judge), scale=100.0)
            p = paired_bootstrap(flags, plain, scale=100.0)
            rec = {"method": row["method"], "attack": attack, "n": n, "refusal": 100 * k / n, "lo": lo, "hi": hi,
                   "vs_default": d[0], "vs_default_lo": d[1], "vs_default_hi": d[2],
                   "vs_plain": p[0], "vs_plain_lo": p[1], "vs_plain_hi": p[2]}  # fmt: skip
            for other in others:
                rec[f"refusal_{other}"] = 100 * _pooled(cell, "flags", other).mean()
            if row["sigma"]:
                called = _pooled(cell, "harmful")
                s_lo, s_hi = wilson(int(called.sum()), len(called))
                rec.update({"sigma_harmful": 100 * called.mean(), "sigma_lo": s_lo, "sigma_hi": s_hi})
            out.append(rec)
    return pd.DataFrame(out)


def worst_attacks(df: pd.DataFrame) -> pd.DataFrame:
    """Per method: its plain refusal, its worst attack and the refusal there, and the loss (plain − worst); its mean
    refusal over the attacks and the mean loss (plain − mean), which still ranks rows when every worst attack is at
    the floor; each loss against Default's."""
    rows = []
    for method, g in df.groupby("method", sort=False):
        plain = g[g["attack"] == PLAIN].iloc[0]
        attacked = g[g["attack"] != PLAIN]
        w = attacked.loc[attacked["refusal"].idxmin()]
        rows.append({"method": method, "plain": plain["refusal"], "plain_lo": plain["lo"], "plain_hi": plain["hi"],
                     "worst_attack": w["attack"], "worst": w["refusal"], "worst_lo": w["lo"], "worst_hi": w["hi"],
                     "loss": plain["refusal"] - w["refusal"], "attacked": attacked["refusal"].mean(),
                     "mean_loss": plain["refusal"] - attacked["refusal"].mean()})  # fmt: skip
    out = pd.DataFrame(rows)
    default = out["method"] == "Default"
    for loss in ("loss", "mean_loss"):
        out[f"{loss}_vs_default"] = out[loss] - float(out.loc[default, loss].iloc[0])
    return out


def judge_gaps(df: pd.DataFrame, judges: list[str]) -> pd.DataFrame:
    """Per attack, over every row: each of the first two judges' pooled refusal, and the gap between them."""
    if len(judges) < 2:
        return pd.DataFrame()
    a, b = judges[0], judges[1]
    g = df.assign(k_a=df["refusal"] * df["n"], k_b=df[f"refusal_{b}"] * df["n"]).groupby("attack", sort=False)
    out = pd.DataFrame({a: g["k_a"].sum() / g["n"].sum(), b: g["k_b"].sum() / g["n"].sum()}).reset_index()
    out["gap"] = out[a] - out[b]
    return out


def _wide(df: pd.DataFrame, value, attacks: list[str]) -> pd.DataFrame:
    cells = df.assign(cell=df.apply(value, axis=1)).pivot(index="method", columns="attack", values="cell")
    return cells.reindex(index=list(dict.fromkeys(df["method"])), columns=attacks).reset_index()


def jailbreak_markdown(result: dict, df: pd.DataFrame, model: str, margin: float) -> str:
    judges = result["judges"]
    attacks = [PLAIN] + [a["name"] for a in result["attacks"]]
    n = sum(result["n"].values())
    sets = " + ".join(f"{s} ({result['n'][s]})" for s in result["sets"])
    worst = worst_attacks(df)
    parts = [
        f"# Jailbreaks: harmful refusal under attack (`{model}`)",
        "",
        f"Table 2's harmful prompts ({sets} = {n} per column), asked plainly and wrapped in each attack of "
        f"configs/attack; the {len(result['rows'])} rows of this run's Table 2 (`methods`). Refusal by the reporting "
        f"judge (`{judges[0]}`), percent, 95% Wilson interval. Higher is more robust.",
        "",
        _wide(df, lambda x: with_interval(x["refusal"], x["lo"], x["hi"]), attacks).to_markdown(index=False),
        "",
        "## Difference from Default on the same attacked prompts (points, paired 95% bootstrap interval)",
        "",
        _wide(df[df["method"] != "Default"], lambda x: with_interval(x["vs_default"], x["vs_default_lo"],
              x["vs_default_hi"]), attacks).to_markdown(index=False),  # fmt: skip
        "",
        "## Each row's worst attack",
        "",
        "The attack with the row's lowest refusal; loss = plain − worst (points); against Default's own loss. The "
        "mean over the attacks, and its loss (plain − mean), rank the rows where their worst attacks all sit at 0.",
        "",
        pd.DataFrame({
            "method": worst["method"],
            "plain": [with_interval(r.plain, r.plain_lo, r.plain_hi) for r in worst.itertuples()],
            "worst attack": worst["worst_attack"],
            "refusal there": [with_interval(r.worst, r.worst_lo, r.worst_hi) for r in worst.itertuples()],
            "loss": worst["loss"].map(lambda v: f"{v:.1f}"),
            "loss − Default's": worst["loss_vs_default"].map(lambda v: f"{v:+.1f}"),
            "mean under attack": worst["attacked"].map(lambda v: f"{v:.1f}"),
            "mean loss": worst["mean_loss"].map(lambda v: f"{v:.1f}"),
            "mean loss − Default's": worst["mean_loss_vs_default"].map(lambda v: f"{v:+.1f}"),
        }).to_markdown(index=False),
        "",
    ]  # fmt: skip
    sigma = df[df["sigma_harmful"].notna()] if "sigma_harmful" in df else df.iloc[0:0]
    if len(sigma):
        parts += [
            "## σ(q) under attack: the share of prompts called harmful (percent, 95% Wilson interval)",
            "",
            "Each SCANS-family row's sign of each prompt: σ(q) for the SCANS rows, the validated classifier for "
            "`SCANS (classifier)`. Under the prefill attack the classifier reads the input the model is given (the "
            "prompt with the assistant's turn already started).",
            "",
            _wide(sigma, lambda x: with_interval(x["sigma_harmful"], x["sigma_lo"], x["sigma_hi"]), attacks)
            .to_markdown(index=False),
            "",
        ]  # fmt: skip
    gaps = judge_gaps(df, judges)
    if len(gaps):
        marked = gaps[gaps["gap"].abs() > margin]
        parts += [
            f"## The two judges: `{judges[0]}` against `{judges[1]}` (pooled over every row, percent)",
            "",
            gaps.assign(**{c: gaps[c].map(lambda v: f"{v:.1f}") for c in (judges[0], judges[1], "gap")})
            .to_markdown(index=False),
            "",
            f"Attacks where they differ by more than {margin:g} points: "
            + (", ".join(f"`{a}`" for a in marked["attack"]) or "none") + ".",
            "",
        ]  # fmt: skip
        for attack in marked["attack"]:
            samples = taken_in_turn(result["rows"], attack, READ)
            if samples:
                parts += [f"### Responses the judges disagree on: `{attack}` ({len(samples)}, taken in turn from each "
                          "row that has any, each row's in prompt order)", ""]  # fmt: skip
                parts += _samples(samples, judges[:2]) + [""]
    return "\n".join(parts).rstrip() + "\n"


def taken_in_turn(rows: list[dict], attack: str, n: int) -> list[tuple[str, dict]]:
    """Up to `n` (method, response) pairs on which the judges disagree under `attack`: each row's first, then each
    row's second, and so on, so that the responses read come from every row that has any, not the first rows alone."""
    queues = [[(row["method"], s) for s in row["disagreements"].get(attack, [])] for row in rows]
    turns = (q[i] for i in range(max(map(len, queues), default=0)) for q in queues if i < len(q))
    return list(islice(turns, n))


def _samples(samples: list[tuple[str, dict]], judges: list[str]) -> list[str]:
    rows = [{"method": m, judges[0]: "refused" if s[judges[0]] else "answered",
             judges[1]: "refused" if s[judges[1]] else "answered",
             "answer": " ".join(s["answer"].split())[:160].replace("|", "\\|")} for m, s in samples]  # fmt: skip
    return [pd.DataFrame(rows).to_markdown(index=False)]


def jailbreak_figure(df: pd.DataFrame, path: Path, model: str) -> None:
    """Each row's plain harmful refusal against its worst-attack refusal (left, with 95% intervals) and against its
    mean refusal over the attacks (right); points under the diagonal lost robustness. Rows are told apart by colour
    and marker in a legend below the axes, not by labels on the points, which overlap where rows share a worst
    refusal (every one of Qwen's is at 0)."""
    w = worst_attacks(df)
    fig, (left, right) = plt.subplots(1, 2, figsize=(10.4, 5.4 + 0.16 * ((len(w) + 1) // 2)), sharey=True)
    for i, r in enumerate(w.itertuples()):
        style = {"fmt": MARKERS[i % len(MARKERS)], "color": plt.cm.tab20(i % 20), "ms": 5, "alpha": 0.85}
        left.errorbar(r.plain, r.worst, xerr=[[r.plain - r.plain_lo], [r.plain_hi - r.plain]],
                      yerr=[[r.worst - r.worst_lo], [r.worst_hi - r.worst]], capsize=2,
                      label=f"{r.method}: {r.worst_attack}", **style)  # fmt: skip
        right.errorbar(r.plain, r.attacked, **style)
    for ax, ylabel in ((left, "harmful refusal, worst attack (%)"), (right, "harmful refusal, mean over attacks (%)")):
        ax.plot([0, 100], [0, 100], color="0.7", lw=1, ls="--")
        ax.set(xlim=(-2, 102), ylim=(-2, 102), xlabel="harmful refusal, plain (%)", ylabel=ylabel)
        ax.yaxis.set_tick_params(labelleft=True)
    fig.suptitle(f"Robustness to jailbreaks: {model}")
    fig.legend(*left.get_legend_handles_labels(), loc="upper center", bbox_to_anchor=(0.5, 0.02), ncol=2,
               fontsize=7, frameon=False, title="row: its worst attack", title_fontsize=7)  # fmt: skip
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=130, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)


def jailbreak_csv(df: pd.DataFrame) -> str:
    return df.to_csv(index=False, float_format="%.2f")
