"""Stage `report`: Tables 1-7 (Markdown, CSV, LaTeX), Figures 4-5 and an index page from the artifacts alone, and
for the organism its behaviour against the targets and the tuned row's validation record. Tables 5-7's refusal
rates come from the `sweep` stage (`make sweeps`); a column that has not been generated is listed as missing.

Each model has its own folder, `<paths.report>/<model name>/`, rewritten whole from that model's artifacts; the
report root holds one index over every model's folder (and the judge's agreement with human labels, which is no
model's). A run for one model leaves every other model's pages alone.

Every rate carries its 95% Wilson interval, every difference from Default a paired bootstrap interval over the
same prompts, and every target check says met, missed or not resolved at this size (`scans.report.uncertainty`).
"""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
from omegaconf import OmegaConf

from scans import methods
from scans.artifacts import write_text_atomic
from scans.data import evaluation_sets, load_prompts
from scans.data.overlap import anchor_matches, blocked_sets, rule
from scans.errors import ConfigError
from scans.methods import Default, Method
from scans.methods.scans import Scans
from scans.report import analysis as analysis_report
from scans.report import sweeps as sweep_report
from scans.report.analysis import span
from scans.report.capability import table3, table3_markdown, table4, table4_markdown
from scans.report.claim import CONDITIONS, claim_markdown, claim_table
from scans.report.classifiers import classifiers_markdown, classifiers_table, disjointness_markdown
from scans.report.frontier import frontier_figure, frontier_markdown, frontier_table
from scans.report.jailbreak import jailbreak_csv, jailbreak_figure, jailbreak_markdown, jailbreak_table
from scans.report.methods import methods_markdown, methods_table
from scans.report.organism import (
    BAND_SETS,
    KIND_OF_SET,
    PAPER_LLAMA2_7B,
    VALIDATION_KINDS,
    organism_markdown,
    precision_differences,
    profile_table,
)
from scans.report.table2 import (
    Layout,
    differences,
    differences_table,
    intervals,
    layout_of,
    rates,
    table2,
    table2_row,
    to_markdown,
    with_intervals,
)
from scans.report.tuning import tuning_markdown
from scans.stages import (
    align,
    analyze,
    anchor,
    capability,
    cost,
    jailbreak,
    judge,
    steer,
    sweep,
    tune,
)
from scans.stages.context import Run

log = logging.getLogger(__name__)
SUCCESSORS = ("cast", "adasteer", "alphasteer", "llm_va")  # the rows issue 34 added, marked on the frontier page
CLAIM_SETS = [s for s, _, _ in CONDITIONS]


def counts(r: Run, method: Method, sets, prompts: dict | None = None) -> dict[str, tuple[int, int]]:
    """(n, refusals) per set name; `prompts` (name -> prompts) the sets' prompts, Table 2's by default."""
    prompts = r.eval_sets if prompts is None else prompts
    out = {}
    for name in sets:
        s = judge.load(r, method, name, prompts[name])
        out[name] = (s["n"], s["refusals"])
    return out


def flags(r: Run, method: Method, sets, prompts: dict | None = None) -> dict[str, list[bool]]:
    prompts = r.eval_sets if prompts is None else prompts
    return {name: judge.flags(r, method, name, prompts[name]) for name in sets}


def model_folder(r: Run) -> Path:
    return Path(r.cfg.paths.report) / r.model_name


def run(r: Run) -> Path:
    out = model_folder(r)
    listed = methods.rows(r)
    df = refusal_table(r, out, "table2", "# Table 2: refusal rate (%)", listed, r.eval_sets)
    print(df.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    if full := steer.full_rows(r):
        title = (
            "# Table 2 on every prompt of " + ", ".join(r.full_sets) + ": refusal rate (%)\n\n"
            f"The rows of `steer.full.methods`{' and the best other row' if r.cfg.steer.full.best_other else ''} "
            "(the other row with the best balanced accuracy on Table 2's own sets: the mean of its harmful sets' "
            "refusal and its benign sets' answer rates), on all the prompts of these sets."
        )
        refusal_table(r, out, "table2_full", title, full, r.full_sets)
    else:
        remove_pages(out, "table2_full")  # an earlier run's, with other settings, must not stay in the index
    claim_page(r, out, [m.name for m in full])
    prepared = [(m.name, type(m).__name__, m.prepare(r)) for m in listed]  # cached artifacts (stage=prepare)
    o = r.cfg.overlap
    write_text_atomic(
        out / "methods.md",
        methods_markdown(methods_table(prepared), r.model_name, o.near_duplicate, blocked_sets(r.cfg)),
    )
    if r.cfg.steer.tuned:
        write_text_atomic(out / "tuning.md", tuning_markdown(tune.load(r).record, r.model_name))
    if (base := steer.base_run(r)) is not None:
        organism_pages(r, base, out)
    write_text_atomic(
        out / "disjointness.md",
        disjointness_markdown(disjointness_rows(r), blocked_sets(r.cfg, learned=False), o.near_duplicate),
    )
    t3, t4 = capability_tables(r, out)
    frontier_page(r, out, listed, t3, t4)
    jailbreak_page(r, out)
    analysis_outputs(r, out)
    write_text_atomic(out / "index.md", index_page(out, r.model_name))
    write_text_atomic(out.parent / "index.md", root_index(out.parent))
    log.info("report: wrote %s", out)
    return out


def frontier_page(r: Run, out: Path, listed: list[Method], t3: pd.DataFrame | None, t4: pd.DataFrame | None) -> None:
    """frontier.md, .csv and .png: each row's benign against harmful refusal (Table 2's sets pooled by label), with
    its capability loss and cost."""
    rows = methods.with_default(listed)
    lay = layout_of(list(r.eval_sets))
    table = frontier_table({m.name: counts(r, m, lay.sets) for m in rows}, lay, t3, t4)
    new = [methods.load(r, n).name for n in SUCCESSORS if n in methods.names(r)]
    n = {len(r.eval_sets[s]) for s in lay.sets}
    sizes = f"{n.pop()} prompts per set" if len(n) == 1 else "Table 2's sizes"
    write_text_atomic(out / "frontier.csv", table.to_csv(index=False, float_format="%.2f"))
    write_text_atomic(
        out / "frontier.md", frontier_markdown(table, r.model_name, r.cfg.judge.name, lay.sets, sizes, new)
    )
    frontier_figure(table, out / "frontier.png", r.model_name, new)


def jailbreak_page(r: Run, out: Path) -> None:
    """jailbreak.md, .csv and .png from the `jailbreak` stage's result; until it has run, a page that says how."""
    if not jailbreak.complete(r):
        for suffix in ("csv", "png"):
            (out / f"jailbreak.{suffix}").unlink(missing_ok=True)
        write_text_atomic(out / "jailbreak.md", (
            "# Jailbreaks: harmful refusal under attack\n\nNot computed for "
            f"`{r.model_name}` with these settings yet: `make jailbreak MODEL=...` (part of `make reproduce-all`).\n"
        ))  # fmt: skip
        return
    result = jailbreak.run(r)
    table = jailbreak_table(result)
    write_text_atomic(out / "jailbreak.csv", jailbreak_csv(table))
    md = jailbreak_markdown(result, table, r.model_name, float(r.cfg.jailbreak.disagreement))
    write_text_atomic(out / "jailbreak.md", md)
    jailbreak_figure(table, out / "jailbreak.png", r.model_name)


def claim_page(r: Run, out: Path, full: list[str]) -> None:
    """claim.md and .csv: every SCANS row against the paper's claim, on all of XSTest where the row has it there."""
    default = Default()
    rows = {}
    for m in methods.rows(r):
        if not isinstance(m, Scans):
            continue
        prompts = {s: (r.full_sets if m.name in full and s in r.full_sets else r.eval_sets)[s]
                   for s in CLAIM_SETS if s in r.eval_sets}  # fmt: skip
        rows[m.name] = (flags(r, m, list(prompts), prompts), flags(r, default, list(prompts), prompts))
    if not rows:
        remove_pages(out, "claim", ("md", "csv"))
        return
    table = claim_table(rows)
    write_text_atomic(out / "claim.csv", table.to_csv(index=False, float_format="%.2f"))
    write_text_atomic(out / "claim.md", claim_markdown(table, r.model_name, r.cfg.judge.name))


def organism_pages(r: Run, base: Run, out: Path) -> None:
    """organism.md and .csv: each build's Default profile (Table 2's sets, XSTest whole where `steer.full.sets` has
    it; the validation analogues) against the bands, beside the base model's on Table 2's sets."""
    default = Default()

    def profile(b: Run) -> dict[str, tuple[int, int]]:
        c = counts(b, default, [s for s in BAND_SETS if s in b.eval_sets])
        return {**c, **counts(b, default, [s for s in BAND_SETS if s in b.full_sets], b.full_sets)}

    builds = {f"organism, {p}": b for p, b in align.builds(r).items()}
    base_counts = counts(base, default, [s for s in BAND_SETS if s in base.eval_sets])
    profiles = {f"{base.model_name} (base)": base_counts, **{name: profile(b) for name, b in builds.items()}}
    kinds = {s: KIND_OF_SET[s] for s in BAND_SETS if s in r.eval_sets}
    table = profile_table(profiles, kinds, set(builds), PAPER_LLAMA2_7B)
    validation = {}
    for name, b in builds.items():
        sets = align.validation(b)
        validation[name] = counts(b, default, list(sets), sets)
    val_table = profile_table(validation, {s: VALIDATION_KINDS[s] for s in r.cfg.align.validation.sets}, set(builds))
    sizes = {s: n for s, (n, _) in profiles[next(iter(builds))].items()}
    write_text_atomic(out / "organism.csv", table.to_csv(index=False, float_format="%.2f"))
    write_text_atomic(out / "organism.md", organism_markdown(
        table, val_table, precision_differences({n: profiles[n] for n in builds}), align.load_summary(r),
        r.model_name, align.precision(r), sizes, r.cfg.judge.name,
    ))  # fmt: skip


def refusal_table(r: Run, out: Path, stem: str, title: str, listed: list[Method], prompts: dict) -> pd.DataFrame:
    """Table 2's page `stem` (Markdown, CSV, LaTeX) of these rows on these sets (name -> prompts), with intervals and
    each row's paired difference from Default; returns the rates without intervals."""
    lay = layout_of(list(prompts))
    tallies = [counts(r, m, lay.sets, prompts) for m in listed]
    df = table2([table2_row(r.model_name, m.name, c, lay) for m, c in zip(listed, tallies)], lay)
    full = with_intervals(df, [intervals(c, lay) for c in tallies], lay)
    sizes = {name: len(prompts[name]) for name in lay.sets}
    md = f"{title}\n\n" + to_markdown(
        full, lay, sizes, _differences(r, listed, lay, prompts), judge=r.cfg.judge.name, fit_judge=r.cfg.judge.fit
    )
    write_table(out, stem, full, md, tex=df)
    return df


def _differences(r: Run, listed: list[Method], lay: Layout, prompts: dict) -> pd.DataFrame:
    """Each row's difference from Default (the unsteered model on the same prompts), with paired intervals."""
    default = flags(r, Default(), lay.sets, prompts)
    return differences_table(
        [(m.name, differences(flags(r, m, lay.sets, prompts), default, lay)) for m in listed if m.name != "Default"]
    )


def write_table(
    out: Path, name: str, df: pd.DataFrame, markdown: str, float_format: str = "%.2f", tex: pd.DataFrame | None = None
) -> None:
    """`name`.md (the given text), `name`.csv and `name`.tex (the table alone, or `tex` where given)."""
    write_text_atomic(out / f"{name}.md", markdown)
    write_text_atomic(out / f"{name}.csv", df.to_csv(index=False, float_format=float_format))
    tex = df if tex is None else tex
    write_text_atomic(out / f"{name}.tex", tex.to_latex(index=False, float_format=float_format, escape=True))


def analysis_outputs(r: Run, out: Path) -> None:
    """Table 1 and the refusal-score plot (anchor), Figures 4-5 and Table 7's classification side (analyze)."""
    anchoring = anchor.run(r)
    t1 = analysis_report.table1(anchoring)
    write_table(out, "table1", t1, analysis_report.table1_markdown(t1, anchoring, r.model_name))
    analysis_report.refusal_score_figure(anchoring, out / "refusal_score.png", r.model_name)
    result = analyze.run(r)
    if result.get("signs"):
        write_text_atomic(out / "signs.md", analysis_report.signs_markdown(result["signs"], t1, r.model_name))
    else:
        remove_pages(out, "signs")
    analysis_report.figure4(result, out / "figure4.png", r.model_name)
    analysis_report.figure5(result, out / "figure5.png", r.model_name)
    table = classifiers_table(result)
    write_text_atomic(out / "figure4.csv", table.to_csv(index=False, float_format="%.4f"))
    sets = {name: len(p) for name, p in tune.validation(r).items()}
    write_text_atomic(out / "classifiers.md", classifiers_markdown(table, result, sets, r.model_name))
    grid = analysis_report.table7_grid(result, sweep.sets(r))
    write_text_atomic(out / "table7_grid.csv", grid.to_csv(index=False, float_format="%.4f"))
    sweep_tables(r, out, grid, result["default_threshold_source"])


def disjointness_rows(r: Run) -> list[dict]:
    """The rule's counts for the organism's sources, the steering anchors' files, the validation split and the
    classifiers' anchor sets."""
    rows = []
    if align.is_organism(r):
        for source, v in align.load_summary(r)["removed_and_used"].items():
            removed = v["evaluation_overlap"] + v.get("near_duplicate", 0) + v["duplicate"]
            rows.append({"pool": source, "role": "organism training", "checked": v["available"],
                         "exact": v["evaluation_overlap"], "near_duplicate": v.get("near_duplicate", 0),
                         "kept": v["available"] - removed})  # fmt: skip
    a = r.cfg.data.anchors
    for name in (a.harmful, a.benign):
        m = anchor_matches(r.cfg, name)
        counts_ = {"exact": m.count("exact"), "near_duplicate": m.count("near"), "kept": m.count("none")}
        rows.append({"pool": name, "role": f"steering anchors (drawn: {a.size})", "checked": len(m), **counts_})
    learned, chosen = rule(r.cfg), rule(r.cfg, learned=False)
    for name, prompts in evaluation_sets(list(r.cfg.tune.validation_sets), None, r.cfg.seed, None).items():
        rows.append({"pool": name, "role": "validation", **chosen.check([p.text for p in prompts]).counts()})
    for anchors, spec in r.cfg.classify.anchor_sets.items():
        if OmegaConf.is_list(spec):
            continue
        for side, dataset in (("harmful", spec.harmful), ("benign", spec.benign)):
            if dataset in (a.harmful, a.benign):
                continue
            texts = [p.text for p in load_prompts(dataset) if p.label == side]
            rows.append({"pool": dataset, "role": f"classifier anchors ({anchors}, {side})",
                         **learned.check(texts).counts()})  # fmt: skip
    return rows


def _sweep_counts(r: Run, method: Method) -> dict[str, tuple[int, int]] | None:
    """{set: (n, refusals)} of one sweep column, or None when the `sweep` stage has not made it (a damaged artifact
    is an error, not a column still to make)."""
    out = {}
    for name in sweep.sets(r):
        if (s := judge.existing(r, method, name, r.eval_sets[name])) is None:
            return None
        out[name] = (s["n"], s["refusals"])
    return out


def _with(values, value: float) -> list[float]:
    """The grid, and the headline's own value after it when it is not on the grid."""
    values = [float(v) for v in values]
    return values if any(abs(v - value) < 1e-9 for v in values) else [*values, float(value)]


def sweep_tables(r: Run, out: Path, grid: pd.DataFrame, threshold_source: str) -> None:
    """Tables 5, 6 and 7: the headline row with one hyperparameter varied (the columns that exist)."""
    head = methods.headline(r)
    lay = layout_of(sweep.sets(r))
    n = {len(r.eval_sets[s]) for s in lay.sets}
    sizes = f"{n.pop()} prompts per set" if len(n) == 1 else "the sets of Table 2"
    headline = (
        f"{head.name} (α {head.alpha:g}, steering {span(head.steer_layers)}, 𝓛 {span(head.classify_layers)}, "
        f"𝒯 {head.threshold:.3f})"
    )
    model = r.model_name

    missing6: list[str] = []
    rows6, ci6 = [], []
    for a in _with(r.cfg.sweep.alphas, head.alpha):
        if (c := _sweep_counts(r, sweep.method(r, "alpha", a))) is None:
            missing6.append(f"α={a:g}")
        else:
            rows6.append({"model": model, "alpha": a, **rates(c, lay)})
            ci6.append((f"α={a:g}", c))
    df6 = sweep_report.table6(rows6, lay)
    md6 = sweep_report.table6_markdown(df6, lay, model, headline, sizes, missing6) + sweep_report.intervals_markdown(
        ci6, lay
    )
    _write_sweep(out, "table6", df6, md6, model)

    missing7: list[str] = []
    thresholds = _with(r.cfg.analysis.paper_thresholds, head.threshold)
    rows7, ci7 = [], []
    for t in thresholds:
        c = _sweep_counts(r, sweep.method(r, "threshold", t))
        if c is None:
            missing7.append(f"𝒯={t:g}")
        else:
            ci7.append((f"𝒯={t:g}", c))
        f1 = grid.loc[(grid["threshold"] - t).abs() < 1e-9, "xstest_f1"].iloc[0]
        rows7.append({"model": model, "threshold": t, **(rates(c, lay) if c else {}), "xstest_f1": f1})
    df7 = sweep_report.table7(rows7, lay)
    shares = analysis_report.table7_shares(grid, thresholds)
    md = sweep_report.table7_markdown(
        df7.dropna(subset=["avg"]), lay, shares, grid, model, headline, span(head.classify_layers), sizes, missing7,
        threshold_source,
    )  # fmt: skip
    write_table(out, "table7", df7, md + sweep_report.intervals_markdown(ci7, lay), "%.4g")  # 𝒯 = 0.9186, not 0.92

    missing5: list[str] = []
    rows5, ci5 = [], []
    for label, m in _segment_methods(r, head):
        c = _sweep_counts(r, m)
        ppl = {corpus: capability.cached_perplexity(r, m, corpus) for corpus in capability.CORPORA}
        if c is None or None in ppl.values():
            missing5.append(label)
            continue
        row = {"model": model, "segment": label, "layers": span(m.steer_layers)}
        row.update({f"{corpus}_ppl": p["ppl"] for corpus, p in ppl.items()})
        rows5.append({**row, **rates(c, lay)})
        ci5.append((label, c))
    df5 = sweep_report.table5(rows5, lay)
    md5 = sweep_report.table5_markdown(df5, lay, model, headline, sizes, missing5) + sweep_report.intervals_markdown(
        ci5, lay
    )
    _write_sweep(out, "table5", df5, md5, model)


def _segment_methods(r: Run, head) -> list[tuple[str, Method]]:
    """Table 5's rows: each segment of `sweep.segments`, then the headline's own layers unless one of them."""
    out = []
    for name in r.cfg.sweep.segments:
        try:
            out.append((name, sweep.method(r, "layers", name)))
        except ConfigError as exc:  # a segment of a very shallow model can be empty
            log.warning("report: Table 5 leaves out %s", exc)
    if all(m.steer_layers != head.steer_layers for _, m in out):
        out.append((f"{span(head.steer_layers)} (Table 2 row)", head))
    return out


def _write_sweep(out: Path, name: str, df: pd.DataFrame, markdown: str, model: str) -> None:
    if len(df):
        write_table(out, name, df, markdown)
        return
    # No column of this model yet (make sweeps): its page says so, and a table built before (an earlier organism)
    # does not stay behind as if it were this one's.
    log.warning("report: %s has nothing for %s yet (its page says what to run)", name, model)
    write_text_atomic(out / f"{name}.md", markdown)
    remove_pages(out, name, suffixes=("csv", "tex"))


def remove_pages(out: Path, name: str, suffixes: tuple[str, ...] = ("md", "csv", "tex")) -> None:
    """Delete a page an earlier run wrote that this run's settings do not make."""
    for suffix in suffixes:
        (out / f"{name}.{suffix}").unlink(missing_ok=True)


INDEX_ORDER = (
    ("table1", "Table 1: layer anchoring"), ("table2", "Table 2: refusal rates"),
    ("table2_full", "Table 2 on all of XSTest"), ("claim", "The paper's claim, tested"),
    ("frontier", "The frontier: benign against harmful refusal, capability, cost"),
    ("jailbreak", "Jailbreaks: harmful refusal under attack"),
    ("table3", "Table 3: capability"),
    ("table4", "Table 4: cost"), ("table5", "Table 5: steering layers"), ("table6", "Table 6: multiplier α"),
    ("table7", "Table 7: threshold 𝒯"),
    ("methods", "The methods of Table 2"), ("organism", "The model organism"),
    ("tuning", "The tuned rows' validation record"), ("signs", "Which way v pushes refusal"),
    ("classifiers", "Harm classifiers (Figures 4-5)"),
    ("disjointness", "Disjointness"),
)  # fmt: skip
FIGURES = (
    ("frontier.png", "The frontier"),
    ("jailbreak.png", "Robustness to jailbreaks"),
    ("figure4.png", "Figure 4"),
    ("figure5.png", "Figure 5"),
    ("refusal_score.png", "Refusal score per layer"),
)


def index_page(out: Path, model: str) -> str:
    """Every table (each with the paper's Llama-2-7b-chat numbers beside ours) and figure of one model, in order."""
    parts = [f"# SCANS replication report: `{model}`", "",
             "Each table is followed by the paper's numbers for Llama-2-7b-chat.", ""]  # fmt: skip
    for name, title in INDEX_ORDER:
        path = out / f"{name}.md"
        if path.is_file():
            text = path.read_text()
            body = text.split("\n", 1)[1] if text.startswith("# ") else text  # the page's own title gives way
            files = f"`{name}.md`" + (", `.csv`, `.tex`" if name.startswith("table") else ", `.csv`")
            body = "\n".join("#" + line if line.startswith("#") else line for line in body.strip().splitlines())
            parts += [f"## {title}", "", f"Files: {files}.", "", body, ""]
    for file, title in FIGURES:
        if (out / file).is_file():
            parts += [f"## {title}", "", f"![{title}]({file})", ""]
    return "\n".join(parts)


def root_index(root: Path) -> str:
    """One page over every model's folder under the report root (each folder's own index has its tables)."""
    parts = [
        "# SCANS replication report",
        "",
        "One folder per model, each built from that model's artifacts alone.",
        "",
    ]
    for folder in sorted(p for p in root.iterdir() if (p / "index.md").is_file()):
        present = [title for name, title in INDEX_ORDER if (folder / f"{name}.md").is_file()]
        parts.append(f"- [`{folder.name}`]({folder.name}/index.md): {len(present)} pages ({', '.join(present)})")
    if (root / "judge_agreement.md").is_file():
        parts += ["", "The judge against human labels (no model): [judge_agreement.md](judge_agreement.md)."]
    return "\n".join(parts) + "\n"


def _not_yet(out: Path, name: str, title: str, command: str, model: str) -> None:
    """A table whose stage has not run for this model: its page says so, and rows of an earlier build are dropped."""
    md = f"# {title}\n\nNot computed for `{model}` yet: `{command}` (part of `make reproduce`), then `stage=report`.\n"
    _write_sweep(out, name, pd.DataFrame(), md, model)


def capability_tables(r: Run, out: Path) -> tuple[pd.DataFrame | None, pd.DataFrame | None]:
    """Tables 3 and 4 from the `capability` and `cost` stages' artifacts; a table whose stage has not run is listed as
    not computed (`stage=all` runs both before the report). Returns them (None where not computed)."""
    c = r.cfg.capability
    t3 = None
    if not capability.complete(r):
        _not_yet(out, "table3", "Table 3: capability", "python -m scans stage=capability", r.model_name)
    else:
        t3 = _table3(r, out)
    if not cost.complete(r):
        _not_yet(out, "table4", "Table 4: cost", "python -m scans stage=cost", r.model_name)
        return t3, None
    result = cost.run(r)
    t4 = table4(result["rows"])
    write_table(out, "table4", t4, table4_markdown(result, c.cost.max_new_tokens, c.cost.prompt_tokens))
    return t3, t4


def _table3(r: Run, out: Path) -> pd.DataFrame:
    c = r.cfg.capability
    rows = capability.run(r)
    df = table3(rows)
    per_subject = "all" if c.mmlu.per_subject is None else f"{c.mmlu.per_subject} per subject"
    default = capability.mmlu(r, Default())
    sizes = {
        "MMLU": f"{default['n']} questions ({per_subject}, seed {c.mmlu.seed}, {c.mmlu.shots}-shot)",
        "XSum": f"{c.xsum.documents} test documents (seed {c.xsum.seed}), {c.xsum.max_new_tokens} new tokens",
        "perplexity": f"{c.perplexity.windows or 'all'} windows of {c.perplexity.window} tokens per corpus "
        f"(C4 seed {c.perplexity.c4_seed})",
        "SCANS row": methods.headline(r).name,
    }
    items = {m.name: capability.items(r, m) for m in capability.methods(r)}
    md = table3_markdown(df, sizes, default.get("crosscheck"), methods.headline(r).name, items)
    write_table(out, "table3", df, md, "%.3f")
    print(df.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    return df
