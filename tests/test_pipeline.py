"""The stages end to end on a tiny random model saved to disk: artifacts, reuse, round trip, Table 2."""

from __future__ import annotations

import pandas as pd
import pytest
import torch
from hydra import compose, initialize_config_dir

from scans.artifacts import ArtifactStore, read_jsonl
from scans.cli import CONFIG_DIR
from scans.report.capability import TABLE3_COLUMNS, TABLE4_COLUMNS
from scans.report.table2 import COLUMNS
from scans.stages import Run, analyze, classify, extract, run_stage, steer, tune
from scans.stages import context as stage_context
from scans.steering import harm_reference


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, tiny_model, tiny_tokenizer):
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path


def make_cfg(tiny_model_dir, tmp_path, *overrides):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose(
            "config",
            overrides=[
                "model=local",
                f"model.source.path={tiny_model_dir}",
                "model.num_layers=2",
                "model.device=cpu",
                "model.hparams.steer_layers=0-1",
                "model.hparams.classify_layers=0-1",
                "model.hparams.threshold=0.5",
                "experiment=smoke",
                "generation.max_new_tokens=4",
                f"paths.artifacts={tmp_path / 'artifacts'}",
                f"paths.report={tmp_path / 'report'}",
                *overrides,
            ],
        )


@pytest.fixture(scope="module")
def finished(tiny_model_dir, tmp_path_factory, data_dir):
    tmp = tmp_path_factory.mktemp("run")
    cfg = make_cfg(tiny_model_dir, tmp)
    run_stage("all", Run(cfg))
    return cfg, tmp


def test_pipeline_writes_table2_in_the_papers_layout(finished):
    cfg, tmp = finished
    df = pd.read_csv(tmp / "report" / "table2.csv")
    assert list(df.columns) == COLUMNS
    assert df["method"].tolist() == ["Default", "SCANS"]
    rates = df[COLUMNS[2:]].to_numpy()
    assert ((rates >= 0) & (rates <= 100)).all()
    assert "Llama2-7b-chat (paper)" in (tmp / "report" / "table2.md").read_text()


def test_pipeline_writes_tables_3_and_4(finished):
    _, tmp = finished
    t3 = pd.read_csv(tmp / "report" / "table3.csv")
    assert list(t3.columns) == TABLE3_COLUMNS and t3["method"].tolist() == ["Default", "SCANS"]
    assert (t3[["wikitext2_ppl", "c4_ppl"]] > 1).all().all()
    assert t3[TABLE3_COLUMNS[4:]].apply(lambda c: c.between(0, 100)).all().all()
    t4 = pd.read_csv(tmp / "report" / "table4.csv")
    assert list(t4.columns) == TABLE4_COLUMNS and t4["batch"].tolist() == [1, 1, 2, 2]
    assert (t4["tokens_per_s"] > 0).all() and (t4["peak_mem_mb"] > 0).all()
    text = (tmp / "report" / "table3.md").read_text()
    assert "agree on 8 of 8 questions" in text and "(paper)" in text


REPORT_FILES = [
    *(f"table{i}.{ext}" for i in (1, 2, 3, 4, 7) for ext in ("md", "csv", "tex")),
    "figure4.png", "figure5.png", "refusal_score.png", "table7_grid.csv", "index.md",
]  # fmt: skip


def test_report_rebuilds_every_table_and_figure_from_artifacts_alone(finished, monkeypatch):
    cfg, tmp = finished
    for name in REPORT_FILES:
        (tmp / "report" / name).unlink()
    monkeypatch.setattr(stage_context, "_MODELS", {})
    monkeypatch.setattr(Run, "lm", property(lambda self: pytest.fail("model loaded")))
    run_stage("report", Run(cfg))
    assert all((tmp / "report" / name).stat().st_size > 0 for name in REPORT_FILES)
    index = (tmp / "report" / "index.md").read_text()
    assert "## Table 1" in index and "## Table 7" in index and "![Figure 5](figure5.png)" in index
    assert "\\begin{tabular}" in (tmp / "report" / "table1.tex").read_text()


def test_threshold_sweep_needs_no_generation(finished, monkeypatch):
    cfg, _ = finished
    swept = cfg.copy()
    swept.analysis.paper_thresholds = [0.9, 0.3]
    monkeypatch.setattr(steer, "generate", lambda *a, **k: pytest.fail("generated"))
    monkeypatch.setattr(classify, "classify", lambda *a, **k: pytest.fail("similarities recomputed"))
    monkeypatch.setattr(stage_context, "_MODELS", {})
    monkeypatch.setattr(Run, "lm", property(lambda self: pytest.fail("model loaded")))  # no forward pass either
    result = analyze.run(Run(swept))
    rows = {round(row["threshold"], 2): row for row in result["table7_classification"]}
    assert 0.3 in rows and 0.9 in rows and rows[0.3]["xstest_safe"] >= rows[0.9]["xstest_safe"]


def test_scans_responses_carry_similarity_and_sign(finished):
    cfg, _ = finished
    r = Run(cfg)
    prompts = r.eval_sets["xstest_safe"]
    scans_method = steer.methods(r)[1]
    _, rows = steer.load(r, scans_method, "xstest_safe", prompts)
    assert [row["prompt"] for row in rows] == [p.text for p in prompts]
    for row in rows:
        assert row["sign"] == (1 if row["similarity"] >= cfg.classify.threshold else -1)
    _, default_rows = steer.load(r, steer.Method(steer.DEFAULT), "xstest_safe", prompts)
    assert all(row["sign"] is None for row in default_rows)


def test_rerun_reuses_every_artifact(finished, monkeypatch):
    cfg, _ = finished

    def forbidden(*args, **kwargs):
        raise AssertionError("recomputed work that was already done")

    monkeypatch.setattr(extract, "harm_reference", forbidden)
    monkeypatch.setattr(classify, "classify", forbidden)
    monkeypatch.setattr(steer, "generate", forbidden)
    run_stage("all", Run(cfg))


def test_new_alpha_reuses_vectors_and_similarities(finished, monkeypatch, tmp_path):
    cfg, _ = finished
    swept = cfg.copy()
    swept.steer.alpha = 7.0
    r = Run(swept)
    assert r.extract_key == Run(cfg).extract_key
    name, prompts = next(iter(r.eval_sets.items()))
    new, old = steer.methods(r), steer.methods(Run(cfg))
    assert steer.key(r, new[1], name, prompts) != steer.key(Run(cfg), old[1], name, prompts)
    assert steer.key(r, new[0], name, prompts) == steer.key(Run(cfg), old[0], name, prompts)
    monkeypatch.setattr(extract, "harm_reference", lambda *a, **k: pytest.fail("vectors re-extracted"))
    monkeypatch.setattr(classify, "classify", lambda *a, **k: pytest.fail("similarities recomputed"))
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


def test_tuned_row_is_chosen_on_validation_sets_only(finished, tiny_model_dir, monkeypatch):
    cfg, tmp = finished
    tuned_cfg = make_cfg(
        tiny_model_dir,
        tmp,
        "steer.tuned=true",
        "tune.alphas=[1.0,3.0]",
        "tune.steer_layers=[0-1,1-1]",
        "tune.prompts_per_label=2",
        "tune.max_new_tokens=2",
    )
    r = Run(tuned_cfg)
    seen = []
    original = steer.respond

    def spy(run, method, name, prompts, layer_sims=None):
        seen.append(name)
        return original(run, method, name, prompts, layer_sims)

    monkeypatch.setattr(steer, "respond", spy)
    run_stage("tune", r)
    assert seen and all(name.startswith("validation-") for name in seen)
    classified = [p.name for p in (tmp / "artifacts" / r.model_name / "classify").iterdir()]
    assert not any(n.startswith("validation-") for n in classified)  # subsets reuse the sets' similarities
    choice = tune.load(r)
    assert choice["alpha"] in (1.0, 3.0) and choice["steer_layers"] in ([0, 1], [1])
    assert len(choice["validation"]["per_layer_auroc"]) == 2 and len(choice["validation"]["grid"]) == 4
    run_stage("all", r)
    df = pd.read_csv(tmp / "report" / "table2.csv")
    assert df["method"].tolist() == ["Default", "SCANS (paper recipe)", "SCANS (tuned)"]  # rows of the model replaced
    assert "Per-layer AUROC" in (tmp / "report" / "tuning.md").read_text()
