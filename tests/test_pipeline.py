"""The stages end to end on a tiny random model saved to disk: artifacts, reuse, round trip, Table 2."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch
from conftest import DEVICE
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from scans import methods
from scans.artifacts import ArtifactStore, read_jsonl
from scans.cli import CONFIG_DIR
from scans.methods import Default, Intervention, Method
from scans.models.chat import tokenize
from scans.report.capability import TABLE3_COLUMNS, TABLE4_COLUMNS
from scans.report.sweeps import PAPER as TABLE7_LAYOUT
from scans.report.sweeps import TABLE5_LEAD
from scans.report.table2 import PAPER
from scans.stages import (
    PIPELINE,
    Run,
    analyze,
    capability,
    classify,
    cost,
    extract,
    judge,
    run_stage,
    steer,
    sweep,
    tune,
)
from scans.stages import context as stage_context
from scans.steering import harm, harm_reference

ROOT = Path(__file__).resolve().parent.parent


def tiny_overrides(tiny_model_dir, tmp_path) -> list[str]:
    """The overrides that run the pipeline on the tiny model, as a command line would give them."""
    return [
        "model=local",
        f"model.source.path={tiny_model_dir}",
        "model.num_layers=2",
        f"model.device={DEVICE}",
        "model.hparams.steer_layers=0-1",
        "model.hparams.classify_layers=0-1",
        "model.hparams.threshold=0.5",
        "experiment=smoke",
        "model.dtype=float32",  # smoke's `auto` would make it bf16 on some CPUs only
        "generation.max_new_tokens=4",
        "methods=[default,scans_paper,scans_tuned,scans_classifier]",
        # stage=all's sweeps make Table 7's columns (analysis.paper_thresholds); Tables 5-6's are left to the
        # multirun tests below.
        "sweep.alphas=[]",
        "sweep.segments=[]",
        # Table 4 at batch 1 too, and MMLU on every subject (smoke's four give fewer than its 8 cross-checks).
        "capability.cost.batch_sizes=[1,2]",
        "capability.mmlu.subjects=null",
        f"paths.artifacts={tmp_path / 'artifacts'}",
        f"paths.report={tmp_path / 'report'}",
    ]


def make_cfg(tiny_model_dir, tmp_path, *overrides):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose("config", overrides=[*tiny_overrides(tiny_model_dir, tmp_path), *overrides])


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("run")
    cfg = make_cfg(tiny_model_dir, tmp)
    run_stage("all", Run(cfg))
    return cfg, tmp


def report_dir(tmp):
    """One folder per model under the report root; the tiny model's config is named `local`."""
    return tmp / "report" / "local"


def test_pipeline_writes_table2_in_the_papers_layout(finished):
    cfg, tmp = finished
    df = pd.read_csv(report_dir(tmp) / "table2.csv")
    # the paper's columns, and HarmfulQA (beyond the paper: harmful questions) before the overall Avg.
    columns = ["model", "method", *PAPER.columns[:-1], "harmfulqa", "avg"]
    assert list(df.columns)[: len(columns)] == columns
    assert df["method"].tolist() == ["Default", "SCANS (paper recipe)"]
    rates = df[PAPER.columns].to_numpy()
    assert ((rates >= 0) & (rates <= 100)).all()
    for c in PAPER.columns:  # each rate inside its Wilson interval
        assert ((df[f"{c}_lo"] <= df[c] + 1e-9) & (df[c] <= df[f"{c}_hi"] + 1e-9)).all()
    text = (report_dir(tmp) / "table2.md").read_text()
    assert "Llama2-7b-chat (paper)" in text and "## Difference from Default" in text
    assert "[local](local/index.md)" in (tmp / "report" / "index.md").read_text().replace("`", "")
    frontier = pd.read_csv(report_dir(tmp) / "frontier.csv")  # every row as one point, Default first
    assert (
        frontier["method"].tolist() == ["Default", "SCANS (paper recipe)"]
        and (report_dir(tmp) / "frontier.png").is_file()
    )
    claim = pd.read_csv(report_dir(tmp) / "claim.csv")  # the SCANS row against the paper's claim, set by set
    assert set(claim["method"]) == {"SCANS (paper recipe)"} and "xstest_unsafe" in set(claim["set"])


def test_pipeline_writes_tables_3_and_4(finished):
    _, tmp = finished
    t3 = pd.read_csv(report_dir(tmp) / "table3.csv")
    assert list(t3.columns) == TABLE3_COLUMNS and t3["method"].tolist() == ["Default", "SCANS (paper recipe)"]
    assert (t3[["wikitext2_ppl", "c4_ppl"]] > 1).all().all()
    assert t3[TABLE3_COLUMNS[4:]].apply(lambda c: c.between(0, 100)).all().all()
    t4 = pd.read_csv(report_dir(tmp) / "table4.csv")
    assert list(t4.columns) == TABLE4_COLUMNS and t4["batch"].tolist() == [1, 1, 2, 2]
    assert (t4["tokens_per_s"] > 0).all() and (t4["peak_mem_mb"] > 0).all()
    text = (report_dir(tmp) / "table3.md").read_text()
    assert "agree on 8 of 8 questions" in text and "(paper)" in text
    assert "Difference from Default (paired bootstrap" in text and "95% Wilson" in text
    verdicts = [line.rsplit("**", 2)[-2] for line in text.splitlines() if line.startswith("- ") and "**" in line]
    assert len(verdicts) == 3 and set(verdicts) <= {"met", "missed", "not resolved at this size"}


REPORT_FILES = [
    *(f"table{i}.{ext}" for i in (1, 2, 3, 4, 7) for ext in ("md", "csv", "tex")),
    "figure4.png", "figure5.png", "refusal_score.png", "table7_grid.csv", "index.md", "classifiers.md",
    "disjointness.md", "figure4.csv",
]  # fmt: skip


def test_report_rebuilds_every_table_and_figure_from_artifacts_alone(finished, monkeypatch):
    cfg, tmp = finished
    for name in REPORT_FILES:
        (report_dir(tmp) / name).unlink()
    other = tmp / "report" / "another-model"  # a GPU run's folder: this model's report leaves it alone
    other.mkdir(exist_ok=True)
    (other / "index.md").write_text("# another model\n")
    (other / "table2.md").write_text("rows of another model\n")
    monkeypatch.setattr(stage_context, "_MODELS", {})
    monkeypatch.setattr(Run, "lm", property(lambda self: pytest.fail("model loaded")))
    run_stage("report", Run(cfg))
    assert all((report_dir(tmp) / name).stat().st_size > 0 for name in REPORT_FILES)
    assert (other / "table2.md").read_text() == "rows of another model\n"
    root = (tmp / "report" / "index.md").read_text()
    assert "another-model/index.md" in root and "local/index.md" in root
    index = (report_dir(tmp) / "index.md").read_text()
    assert "## Table 1" in index and "## Table 7" in index and "![Figure 5](figure5.png)" in index
    assert "\\begin{tabular}" in (report_dir(tmp) / "table1.tex").read_text()


def test_stage_all_makes_table7s_columns_and_records_its_run(finished):
    """`stage=all` runs the sweeps (here Table 7's thresholds: the tiny run's grid) and writes the run record."""
    cfg, tmp = finished
    t7 = pd.read_csv(report_dir(tmp) / "table7.csv")
    assert t7["threshold"].tolist() == [*cfg.analysis.paper_thresholds, cfg.classify.threshold]
    assert not t7["avg"].isna().any()  # every column generated and judged
    record = pd.read_csv(report_dir(tmp) / "run.csv")
    assert record["stage"].tolist() == [*PIPELINE, "total"]
    assert record["seconds"].iloc[-1] == pytest.approx(record["seconds"].iloc[:-1].sum(), abs=0.2)
    page = (report_dir(tmp) / "run.md").read_text()
    assert "- commit: " in page and "- torch threads: " in page and "`python -m scans stage=all`" in page
    assert re.search(r"- cpu: .+, \w+\n- bf16 matmul units: (yes|no)\n", page)
    assert float(re.search(r"- fp32 GEMM, 1024³: (\d+) GFLOP/s", page).group(1)) > 0  # the machine's measured speed
    assert "| sweeps " in page


def test_report_says_which_tables_are_not_computed_yet(finished, monkeypatch, tmp_path):
    """Without the cost stage's artifact, Table 4's page says so (and an earlier build's rows do not stay)."""
    cfg, tmp = finished
    r = Run(cfg)
    assert cost.complete(r) and capability.complete(r)
    moved = tmp_path / "cost"
    shutil.move(str(r.store.path(r.model_name, "cost", cost.key(r))), moved)
    try:
        monkeypatch.setattr(Run, "lm", property(lambda self: pytest.fail("model loaded")))
        run_stage("report", Run(cfg))
        page = (report_dir(tmp) / "table4.md").read_text()
        assert "Not computed for `local` yet: `python -m scans stage=cost`" in page
        assert not (report_dir(tmp) / "table4.csv").exists() and (report_dir(tmp) / "table3.csv").exists()
    finally:
        shutil.move(str(moved), str(r.store.path(r.model_name, "cost", cost.key(r))))


def test_threshold_sweep_needs_no_generation(finished, monkeypatch):
    cfg, _ = finished
    swept = cfg.copy()
    swept.analysis.paper_thresholds = [0.9, 0.3]
    monkeypatch.setattr(steer, "generate", lambda *a, **k: pytest.fail("generated"))
    monkeypatch.setattr(classify, "prompt_and_response_states", lambda *a, **k: pytest.fail("similarities recomputed"))
    monkeypatch.setattr(stage_context, "_MODELS", {})
    monkeypatch.setattr(Run, "lm", property(lambda self: pytest.fail("model loaded")))  # no forward pass either
    result = analyze.run(Run(swept))
    rows = {round(row["threshold"], 2): row for row in result["table7_classification"]}
    assert 0.3 in rows and 0.9 in rows and rows[0.3]["xstest_safe"] >= rows[0.9]["xstest_safe"]


def test_scans_responses_carry_coefficient_and_sign(finished):
    cfg, _ = finished
    r = Run(cfg)
    prompts = r.eval_sets["xstest_safe"]
    scans_method = methods.rows(r)[1]
    _, rows = steer.load(r, scans_method, "xstest_safe", prompts)
    assert [row["prompt"] for row in rows] == [p.text for p in prompts]
    sims = scans_method.similarities(classify.similarities(r, "xstest_safe", prompts))
    for row, s in zip(rows, sims):
        assert row["sign"] == (1 if s >= cfg.classify.threshold else -1)
        assert row["coefficient"] == pytest.approx(row["sign"] * cfg.steer.alpha)
    _, default_rows = steer.load(r, Default(), "xstest_safe", prompts)
    assert all(row["sign"] is None for row in default_rows)


def test_rerun_reuses_every_artifact(finished, monkeypatch):
    cfg, _ = finished

    def forbidden(*args, **kwargs):
        raise AssertionError("recomputed work that was already done")

    monkeypatch.setattr(extract, "harm_reference", forbidden)
    monkeypatch.setattr(classify, "prompt_and_response_states", forbidden)  # every classifier's forward pass
    monkeypatch.setattr(harm, "response_gradients", forbidden)  # GradSafe's backward passes
    monkeypatch.setattr(harm, "_linear_inputs_and_deltas", forbidden)
    monkeypatch.setattr(steer, "generate", forbidden)
    run_stage("all", Run(cfg))


def test_new_alpha_reuses_vectors_and_similarities(finished, monkeypatch, tmp_path):
    cfg, _ = finished
    swept = cfg.copy()
    swept.steer.alpha = 7.0
    r = Run(swept)
    assert r.extract_key == Run(cfg).extract_key
    name, prompts = next(iter(r.eval_sets.items()))
    new, old = methods.rows(r), methods.rows(Run(cfg))
    c_new, c_old = (m.coefficients(run, prompts, name) for run, m in ((r, new[1]), (Run(cfg), old[1])))
    assert steer.key(r, new[1], name, prompts, c_new) != steer.key(Run(cfg), old[1], name, prompts, c_old)
    assert steer.key(r, new[0], name, prompts, None) == steer.key(Run(cfg), old[0], name, prompts, None)
    monkeypatch.setattr(extract, "harm_reference", lambda *a, **k: pytest.fail("vectors re-extracted"))
    monkeypatch.setattr(classify, "prompt_and_response_states", lambda *a, **k: pytest.fail("similarities recomputed"))
    monkeypatch.setattr(stage_context, "_MODELS", {})  # and no model is needed for either
    monkeypatch.setattr(Run, "lm", property(lambda self: pytest.fail("model loaded")))
    run_stage("extract", r)
    run_stage("classify", r)


def test_vectors_round_trip_through_their_artifact(finished):
    cfg, _ = finished
    r = Run(cfg)
    loaded = extract.load(r)
    a = r.anchors
    ref = harm_reference(
        r.lm.model, r.lm.chat, [p.text for p in a.harmful_anchors], [p.text for p in a.benign_anchors], normalize=True
    )
    torch.testing.assert_close(loaded["refusal_vectors"], ref.vectors, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(loaded["harm_direction"], ref.direction, atol=1e-6, rtol=1e-6)
    path = r.store.path(r.model_name, "extract", r.extract_key)
    provenance = pd.read_json(path / "provenance.json", typ="series")
    assert provenance["anchors"]["seed"] == cfg.seed
    anchors = read_jsonl(path / "anchors.jsonl")
    assert [x["text"] for x in anchors if x["role"] == "harmful"] == [p.text for p in a.harmful_anchors]


def test_interrupted_write_leaves_nothing(tmp_path):
    store = ArtifactStore(tmp_path)
    with pytest.raises(KeyboardInterrupt):
        with store.writing("m", "stage", "k", {}) as tmp:
            (tmp / "half.jsonl").write_text("{}")
            raise KeyboardInterrupt
    assert not store.is_complete("m", "stage", "k")
    assert list((tmp_path / "m" / "stage").iterdir()) == []


def test_cached_artifact_is_built_once_and_never_half_written(tmp_path):
    store = ArtifactStore(tmp_path)
    calls = []

    def build(tmp):
        calls.append(tmp)
        (tmp / "weights.bin").write_bytes(b"x")
        return {"loss": 0.5}

    assert store.cached("m", "prepare", "k", build) == {"loss": 0.5}
    assert store.cached("m", "prepare", "k", build) == {"loss": 0.5} and len(calls) == 1
    assert (store.path("m", "prepare", "k") / "weights.bin").is_file()

    def failing(tmp):
        (tmp / "half.bin").write_bytes(b"x")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.cached("m", "prepare", "other", failing)
    assert not store.is_complete("m", "prepare", "other") and not store.path("m", "prepare", "other").exists()


def test_tuned_row_is_chosen_on_validation_sets_only(finished, tiny_model_dir, monkeypatch):
    """Every prompt the `tune` stage reads (the texts it generates on, the sets whose similarities and classifier
    scores it asks for, the features computed on the way, the token ids generation is fed) is a validation prompt,
    and none is in a reported evaluation set: compared by text (and ids), not by set name."""
    from scans.data import evaluation_sets
    from scans.models.chat import encode

    cfg, tmp = finished
    tuned_cfg = make_cfg(
        tiny_model_dir,
        tmp,
        "steer.tuned=true",
        "tune.alphas=[1.0,3.0]",
        "tune.steer_layers=[0-1,1-1]",
        "tune.prompts_per_label=2",
        "tune.max_new_tokens=2",
        "tune.validation_limit=12",  # 48 validation prompts: every classifier is scored on them, GradSafe by backprop
        "methods=[default,scans_paper,scans_tuned,scans_two,scans_classifier]",
        "steer.full.sets=[xstest_safe,xstest_unsafe]",  # some rows on all 450 XSTest prompts (table2_full)
        "analysis.signs.block=1",  # the sign probe, layer by layer
    )
    r = Run(tuned_cfg)
    validation_texts = {p.text for prompts in tune.validation(r).values() for p in prompts}
    reported = {p.text for prompts in r.eval_sets.values() for p in prompts}
    whole = evaluation_sets(list(r.cfg.data.eval_sets), None, r.cfg.data.limit_seed, r.anchors)  # not only `limit`
    reported |= {p.text for prompts in whole.values() for p in prompts}
    assert validation_texts and not validation_texts & reported
    validation_ids = {tuple(encode(r.lm.chat, t).input_ids) for t in validation_texts}

    seen = []
    read: dict[str, list[str]] = {"respond": [], "similarities": [], "scores": [], "features": [], "anchors": []}
    fed: list[tuple[int, ...]] = []
    originals = {
        "respond": steer.respond_jobs, "similarities": classify.similarities, "scores": classify.scores,
        "features": classify.features, "generate": steer.generate,
    }  # fmt: skip

    def respond(run, jobs, max_new_tokens=None):
        for _, sets, _ in jobs:
            seen.extend(sets)
            read["respond"] += [p.text for prompts in sets.values() for p in prompts]
        return originals["respond"](run, jobs, max_new_tokens)

    def similarities(run, name, prompts):
        read["similarities"] += [p.text for p in prompts]
        return originals["similarities"](run, name, prompts)

    def scores(run, kind, anchors, name, prompts):
        read["scores"] += [p.text for p in prompts]
        return originals["scores"](run, kind, anchors, name, prompts)

    def features(run, name, prompts):
        # A classifier's own anchors (its training data, `fitted`) are no validation prompts, but no test ones either.
        read["anchors" if name and name.startswith("anchors-") else "features"] += [p.text for p in prompts]
        return originals["features"](run, name, prompts)

    def generate(model, tokenizer, prompts, *args, **kwargs):
        fed.extend(tuple(p.input_ids) for p in prompts)
        return originals["generate"](model, tokenizer, prompts, *args, **kwargs)

    monkeypatch.setattr(steer, "respond_jobs", respond)
    monkeypatch.setattr(steer, "generate", generate)
    monkeypatch.setattr(classify, "similarities", similarities)
    monkeypatch.setattr(classify, "scores", scores)
    monkeypatch.setattr(classify, "features", features)
    run_stage("tune", r)
    monkeypatch.undo()
    assert seen and all(name.startswith("validation-") for name in seen)
    assert read["respond"] and read["similarities"] and read["scores"] and fed
    for where in ("respond", "similarities", "scores", "features"):
        texts = set(read[where])
        assert texts <= validation_texts, f"tune {where}: {sorted(texts - validation_texts)[:3]} not validation"
        assert not texts & reported, f"tune {where}: {sorted(texts & reported)[:3]} reported"
    assert not set(read["anchors"]) & reported
    assert set(fed) <= validation_ids  # what generation was fed: validation prompts' token ids

    classified = [p.name for p in (tmp / "artifacts" / r.model_name / "classify").iterdir()]
    assert not any(n.startswith("validation-") for n in classified)  # subsets reuse the sets' similarities
    choice = tune.load(r).record
    assert choice["alpha"] in (1.0, 3.0) and choice["steer_layers"] in ([0, 1], [1])
    assert len(choice["validation"]["per_layer_auroc"]) == 2 and len(choice["validation"]["grid"]) == 4
    run_stage("all", r)
    out = tmp / "report" / r.model_name  # one folder per model (scans.stages.report.model_folder)
    df = pd.read_csv(out / "table2.csv")
    rows = df["method"].tolist()  # rows of the model replaced
    assert rows[:4] == ["Default", "SCANS (paper recipe)", "SCANS (tuned)", "SCANS (tuned, two magnitudes)"]
    c = choice["classifier"]
    assert rows[4:] == [f"SCANS + classifier ({c['kind']}, {c['anchors']} anchors)"] and len(c["grid"]) == 4
    two = choice["two_magnitudes"]  # (0, 1, 3) x (0, 1, 3) on each of the 2 layer ranges, from the same responses
    assert len(two["grid"]) == 18 and two["alpha"] in (0.0, 1.0, 3.0) and two["alpha_harmful"] in (0.0, 1.0, 3.0)
    row, sym = methods.load(r, "scans_two"), methods.load(r, "scans_tuned")  # each row steers with its own choice
    assert (row.alpha, row.alpha_harmful, list(row.steer_layers)) == (
        two["alpha"], two["alpha_harmful"], two["steer_layers"]
    )  # fmt: skip
    assert (sym.alpha, sym.alpha_harmful, list(sym.steer_layers)) == (choice["alpha"], None, choice["steer_layers"])
    # Table 2's deciding rows on all of XSTest: the listed ones, then the best other (here the only other one).
    full = pd.read_csv(out / "table2_full.csv")
    assert full["method"].tolist() == rows
    assert "xstest_safe 250, xstest_unsafe 200" in (out / "table2_full.md").read_text()
    summary = judge.load(r, Default(), "xstest_safe", r.full_sets["xstest_safe"])
    assert summary["n"] == 250 and full["xstest_safe"][0] == pytest.approx(100 * summary["refusals"] / 250, abs=0.01)
    compared = {(x["kind"], x["anchors"]) for x in choice["classifiers"]}
    assert compared == {(k, a) for k, sets in cfg.classify.compare.items() for a in sets}
    assert c["auroc"] == max(x["auroc"] for x in choice["classifiers"])  # `best`, on the validation split
    text = (out / "tuning.md").read_text()
    assert "Per-layer AUROC" in text and "SCANS + classifier" in text and "two magnitudes" in text
    # The sign probe: unsteered, then ±v on each layer and under each positions policy, on validation prompts only.
    probe = analyze.run(r)["signs"]
    assert [(x["probe"], x["layers"], x["sign"]) for x in probe["rows"][:5]] == [
        (None, None, 0),
        ("block", [0], 1),
        ("block", [0], -1),
        ("block", [1], 1),
        ("block", [1], -1),
    ]
    assert [x["positions"] for x in probe["rows"][5:]] == [p for p in cfg.analysis.signs.positions for _ in (1, -1)]
    assert probe["n"] == {"harmful": 2, "benign": 2} and all(0 <= x["harmful"] <= 1 for x in probe["rows"])
    assert "Layer by layer" in (out / "signs.md").read_text()


# Tables 5-7: the `sweep` stage.


def sweep_cfg(tiny_model_dir, tmp, *overrides):
    return make_cfg(
        tiny_model_dir, tmp, "sweep.alphas=[2.0]", "sweep.segments=[former,middle,latter]", *overrides
    )  # fmt: skip


def stage_dirs(tmp, stage: str) -> set[str]:
    root = next(p for p in (tmp / "artifacts").iterdir() if not p.name.startswith(".")) / stage  # not .locks
    return {p.name for p in root.iterdir()} if root.is_dir() else set()


@pytest.fixture(scope="module")
def swept(finished, tiny_model_dir, data_dir):
    """Table 6's α=2.0 column and Table 5's middle and latter rows, as two Hydra multiruns of the real CLI."""
    cfg, tmp = finished
    before = {s: stage_dirs(tmp, s) for s in ("extract", "classify", "responses")}
    env = dict(os.environ, SCANS_DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1")
    args = [
        "model=local", f"model.source.path={tiny_model_dir}", "model.num_layers=2", "model.device=cpu",
        "model.hparams.steer_layers=0-1", "model.hparams.classify_layers=0-1", "model.hparams.threshold=0.5",
        "experiment=smoke", "model.dtype=float32", "generation.max_new_tokens=4",
        f"paths.artifacts={tmp / 'artifacts'}",
        f"hydra.sweep.dir={tmp / 'multirun'}", "stage=sweep",
    ]  # fmt: skip
    for job in (["sweep.vary=alpha", "steer.alpha=2.0,4.0"], ["sweep.vary=layers", "steer.layers=middle,latter"]):
        proc = subprocess.run(
            [sys.executable, "-m", "scans", "-m", *args, *job], cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=600,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
    return cfg, tmp, before


@pytest.mark.parametrize(
    "launcher, plugin, alphas, settings",
    [
        ("joblib", "hydra_joblib_launcher", (2.5, 3.5), ["hydra.launcher.n_jobs=2"]),
        # The SLURM launcher's code path with submitit's local executor in place of sbatch.
        ("submitit_local", "hydra_submitit_launcher", (2.25, 2.75), ["hydra.launcher.timeout_min=10"]),
    ],
)
def test_a_sweep_runs_in_parallel_through_hydras_launchers(
    finished, tiny_model_dir, data_dir, monkeypatch, launcher, plugin, alphas, settings
):
    """Two jobs of a multirun at once (separate processes) over the same artifact store: both finish, and the
    artifacts they share (vectors, similarities) are read, not rebuilt."""
    pytest.importorskip(f"hydra_plugins.{plugin}")
    cfg, tmp = finished
    before = {s: stage_dirs(tmp, s) for s in ("extract", "classify")}
    env = dict(os.environ, SCANS_DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1")
    sweep_dir = tmp / launcher
    args = [
        "model=local", f"model.source.path={tiny_model_dir}", "model.num_layers=2", "model.device=cpu",
        "model.hparams.steer_layers=0-1", "model.hparams.classify_layers=0-1", "model.hparams.threshold=0.5",
        "experiment=smoke", "model.dtype=float32", "generation.max_new_tokens=4",
        f"paths.artifacts={tmp / 'artifacts'}",
        f"hydra.sweep.dir={sweep_dir}", "stage=sweep", "sweep.vary=alpha", f"steer.alpha={alphas[0]},{alphas[1]}",
        f"hydra/launcher={launcher}", *settings,
    ]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-m", "scans", "-m", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    if launcher == "joblib":
        assert "Joblib.Parallel" in proc.stdout + proc.stderr  # the launcher ran the jobs
    else:
        assert len(list((sweep_dir / ".submitit").glob("*/*_result.pkl"))) == 2  # one submitit job per value
    assert len(list(sweep_dir.glob("*steer.alpha=*"))) == 2
    assert {s: stage_dirs(tmp, s) for s in ("extract", "classify")} == before
    monkeypatch.setattr(stage_context, "_MODELS", {})
    monkeypatch.setattr(Run, "lm", property(lambda self: pytest.fail("model loaded")))
    for alpha in alphas:  # each job's column is complete: read back without a model
        assert sweep.run(Run(make_cfg(tiny_model_dir, tmp, f"steer.alpha={alpha}", "sweep.vary=alpha")))["refusal"]
    assert (tmp / "artifacts" / ".locks").is_dir()  # the jobs took the artifacts' locks


def test_sweep_multirun_reuses_vectors_and_similarities(swept):
    cfg, tmp, before = swept
    assert len(list((tmp / "multirun").glob("*steer.alpha=*"))) == 2  # one job per value
    assert stage_dirs(tmp, "extract") == before["extract"]  # no second extraction
    assert stage_dirs(tmp, "classify") == before["classify"]  # no second classification pass
    sets = len(TABLE7_LAYOUT.sets)
    # α 2.0 and 4.0 (new), middle = layer 0 and latter = layer 1 (new); the headline's α and layers exist already.
    assert len(stage_dirs(tmp, "responses") - before["responses"]) == 4 * sets


def test_columns_whose_signs_agree_share_one_generation(swept, tiny_model_dir, monkeypatch):
    cfg, tmp, _ = swept
    r = Run(cfg)
    head = methods.headline(r)
    sims = torch.cat([head.similarities(classify.similarities(r, n, r.eval_sets[n])) for n in TABLE7_LAYOUT.sets])
    values = sorted(set(sims.tolist()))
    lo, hi = values[len(values) // 2 - 1], values[len(values) // 2]  # no prompt's s_q lies between them
    first, second = (sweep_cfg(tiny_model_dir, tmp, "sweep.vary=threshold", f"classify.threshold={lo + f * (hi - lo)}")
                     for f in (1 / 3, 2 / 3))  # fmt: skip
    run_stage("sweep", Run(first))
    monkeypatch.setattr(steer, "generate", lambda *a, **k: pytest.fail("generated again"))
    result = sweep.run(Run(second))
    assert result["refusal"] == sweep.run(Run(first))["refusal"]


def test_report_builds_tables_5_to_7_from_sweep_artifacts_alone(swept, tiny_model_dir, monkeypatch):
    cfg, tmp, _ = swept
    report_cfg = sweep_cfg(tiny_model_dir, tmp, "analysis.paper_thresholds=[0.9,0.3]")
    monkeypatch.setattr(stage_context, "_MODELS", {})
    monkeypatch.setattr(Run, "lm", property(lambda self: pytest.fail("model loaded")))
    run_stage("report", Run(report_cfg))
    out = report_dir(tmp)
    t5 = pd.read_csv(out / "table5.csv")
    assert list(t5.columns) == [*TABLE5_LEAD, *TABLE7_LAYOUT.columns]
    # A 2-layer model has an empty former segment; middle is layer 0, latter layer 1 (the headline steers 0-1).
    assert t5["segment"].tolist() == ["middle", "latter", "0-1 (Table 2 row)"]
    assert t5["layers"].tolist() == ["0-0", "1-1", "0-1"] and (t5[["wikitext2_ppl", "c4_ppl"]] > 1).all().all()
    t6 = pd.read_csv(out / "table6.csv")
    assert t6["alpha"].tolist() == [2.0, cfg.steer.alpha]  # the grid, then the headline's own α (Table 2's row)
    t7 = pd.read_csv(out / "table7.csv")
    assert t7["threshold"].tolist() == [0.9, 0.3, cfg.classify.threshold]  # the grid, then the headline's 𝒯
    assert not pd.isna(t7["avg"].iloc[-1])
    text = (out / "table7.md").read_text()
    for t in t7.loc[t7["avg"].isna(), "threshold"]:  # a 𝒯 whose signs match no generated column is listed
        assert f"𝒯={t:g}" in text.split("Not generated yet:")[1].splitlines()[0]
    assert "(reference §3.11)" in text and "XSTest (harmful = positive)" in text
    assert "α=2" in (out / "table6.md").read_text() and "## Table 6" in (out / "index.md").read_text()
    headline = methods.headline(Run(cfg))
    table2 = pd.read_csv(out / "table2.csv").set_index("method").loc[headline.name]
    row6 = t6.set_index("alpha").loc[cfg.steer.alpha]
    assert row6["xstest_safe"] == pytest.approx(table2["xstest_safe"])  # the same responses as Table 2's row


def test_segment_names_resolve_to_thirds_without_a_model(monkeypatch):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["steer.layers=latter"])  # the organism: 30 layers
    monkeypatch.setattr(Run, "lm", property(lambda self: pytest.fail("model loaded")))
    r = Run(cfg)
    assert r.layers_of("former") == list(range(10)) and r.layers_of("middle") == list(range(10, 20))
    assert r.steer_layers == list(range(20, 30))


# A method defined here, in one class: generation, judging and the report take it like any row.


@dataclasses.dataclass(frozen=True)
class Toy(Method):
    """Always answers in the refusal's words: every prompt gets "I'm sorry" inserted before it and forced first."""

    prefix: str = "I'm sorry"

    def intervention(self, run):
        return ForceFirst(tuple(tokenize(run.lm.tokenizer, self.prefix)))


@dataclasses.dataclass(frozen=True)
class ForceFirst(Intervention):
    force: tuple = ()

    def processor(self, model, attention_mask, rows):
        from transformers import LogitsProcessor

        width, force = attention_mask.shape[1], self.force

        class Force(LogitsProcessor):
            def __call__(self, input_ids, scores):
                step = input_ids.shape[1] - width
                if step < len(force):
                    scores = torch.full_like(scores, float("-inf"))
                    scores[:, force[step]] = 0.0
                return scores

        return Force()


def test_a_method_defined_in_a_test_runs_through_generation_judging_and_the_report(finished):
    cfg, tmp = finished
    toy_cfg = cfg.copy()
    with open_dict(toy_cfg):
        toy_cfg.method = {"_target_": f"{__name__}.Toy", "name": "Toy"}
    r = Run(toy_cfg)
    run_stage("steer", r)
    run_stage("judge", r)
    run_stage("report", r)
    df = pd.read_csv(report_dir(tmp) / "table2.csv")
    row = df.set_index("method").loc["Toy"]
    assert row["xstest_safe"] == 100.0 and row["advbench"] == 100.0  # every response starts "I'm sorry"
    _, rows = steer.load(r, methods.rows(r)[0], "xstest_safe", r.eval_sets["xstest_safe"])
    assert all(x["response"].startswith("I'm sorry") for x in rows)


def test_a_new_prompt_set_goes_from_a_csv_to_a_table2_column_with_one_yaml_and_one_command(
    finished, tiny_model_dir, tmp_path, monkeypatch
):
    from scans import cli
    from scans.data import configure

    cfg, tmp = finished
    (tmp_path / "garden.csv").write_text(
        "prompt\nHow often should I water a cactus?\nHow do I fold a paper crane?\nWhat should I name my goldfish?\n"
    )
    sets = tmp_path / "sets"
    sets.mkdir()
    (sets / "garden.yaml").write_text(
        f"description: my own benign prompts\npath: {tmp_path / 'garden.csv'}\nformat: csv\ntext_column: prompt\n"
        "label: benign\n"
    )
    columns = [*PAPER.sets, "garden"]
    command = [
        *tiny_overrides(tiny_model_dir, tmp),
        "methods=[default,scans_paper]",
        f"data.sets_dirs=[{sets}]",
        f"data.eval_sets=[{','.join(columns)}]",
        "stage=all",
    ]
    logs = ["hydra/job_logging=none", "hydra/hydra_logging=none", f"hydra.run.dir={tmp_path / 'out'}"]
    monkeypatch.setattr(sys, "argv", ["scans", *command, *logs])
    try:
        cli.main()
    finally:
        configure()  # the run's set stays out of later tests
    df = pd.read_csv(report_dir(tmp) / "table2.csv").set_index("method")
    assert list(df.columns[1 : len(PAPER.columns) + 2]) == [*PAPER.columns[:-1], "garden", "avg"]
    for method in ("Default", "SCANS (paper recipe)"):
        assert 0 <= df.loc[method, "garden"] <= 100
        assert df.loc[method, "garden_lo"] <= df.loc[method, "garden"] <= df.loc[method, "garden_hi"]
    page = (report_dir(tmp) / "table2.md").read_text()
    assert "garden ↓" in page and "garden 2" in page  # the column, lower is better, and its size (smoke keeps 2 of 3)
    assert "judge `scans_rules`" in page


def test_table2_can_be_judged_by_another_judge_without_generating_again(finished, tiny_model_dir, monkeypatch):
    """`judge=xstest_learned`: the same responses judged again (answers to XSTest prompts by models fitted without
    them), the report names the judge, and no model is loaded."""
    cfg, tmp = finished
    r = Run(make_cfg(tiny_model_dir, tmp, "judge=xstest_learned"))
    monkeypatch.setattr(stage_context, "_MODELS", {})
    monkeypatch.setattr(Run, "lm", property(lambda self: pytest.fail("model loaded")))
    run_stage("judge", r)
    run_stage("report", r)
    page = (report_dir(tmp) / "table2.md").read_text()
    assert "judge `xstest_learned`" in page and "choices were made with `scans_rules`" in page
    summary = judge.load(r, Default(), "xstest_safe", r.eval_sets["xstest_safe"])
    assert summary["judge"] == "xstest_learned"
