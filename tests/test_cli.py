"""Bad input fails with one clear line on stderr and a non-zero exit, before any model is loaded.

A few cases run `python -m scans` as a real process; the rest call the same entry point in-process (the command
line in sys.argv, the exit code from SystemExit), which tests the same code without paying for a fresh import of
torch and transformers in each case."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, data_dir: Path | None = None, tmp_path: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, SCANS_ARTIFACTS=str(tmp_path / "artifacts"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    if data_dir is not None:
        env["SCANS_DATA_DIR"] = str(data_dir)
    if not any(a.startswith("model=") for a in args):
        args = ("model=smollm2_135m_instruct", *args)  # the base model: no alignment data in the way
    return subprocess.run(
        [sys.executable, "-m", "scans", *args, f"hydra.run.dir={tmp_path / 'out'}"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def run_in_process(
    monkeypatch, capsys, *args: str, tmp_path: Path, data_dir: Path | None = None
) -> subprocess.CompletedProcess:
    """The CLI's `main` in this process, as `run_cli` would run it."""
    from scans import cli

    monkeypatch.setenv("SCANS_ARTIFACTS", str(tmp_path / "artifacts"))
    if data_dir is not None:
        monkeypatch.setenv("SCANS_DATA_DIR", str(data_dir))
    if not any(a.startswith("model=") for a in args):
        args = ("model=smollm2_135m_instruct", *args)
    # No job logging: Hydra's dictConfig would reset the handlers the test process's other libraries set up.
    logs = ["hydra/job_logging=none", "hydra/hydra_logging=none"]
    monkeypatch.setattr(sys, "argv", ["scans", *args, *logs, f"hydra.run.dir={tmp_path / 'out'}"])
    capsys.readouterr()
    try:
        cli.main()
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 1
    out = capsys.readouterr()
    return subprocess.CompletedProcess(sys.argv, code, out.out, out.err)


def assert_one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> None:
    assert proc.returncode == 2, proc.stderr[-2000:]
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr[-2000:]
    for fragment in fragments:
        assert fragment in errors[0], errors[0]


def copy_data(src: Path, dst: Path, skip: str) -> Path:
    """A data folder like `src` whose file `skip` (relative path) is left out, for the test to write its own."""
    shutil.copytree(src, dst, ignore=lambda d, names: [n for n in names if Path(d, n) == src / skip])
    return dst


def test_missing_alignment_data_is_named_for_the_organism(tmp_path):
    empty = tmp_path / "data"
    empty.mkdir()
    proc = run_cli("model=smollm2_organism", "stage=extract", data_dir=empty, tmp_path=tmp_path)
    assert_one_line_error(proc, str(empty / "safety_tuned_llamas" / "training"))


def test_unknown_model_is_rejected(tmp_path, monkeypatch, capsys):
    proc = run_in_process(monkeypatch, capsys, "model=llama-9", tmp_path=tmp_path)
    assert_one_line_error(proc, "unknown model 'llama-9'", "llama2_7b_chat")


def test_non_numeric_alpha_is_rejected(tmp_path, monkeypatch, capsys):
    proc = run_in_process(monkeypatch, capsys, "stage=extract", "steer.alpha=strong", tmp_path=tmp_path)
    assert_one_line_error(proc, "steer.alpha='strong' is not a number")


def test_steering_layer_out_of_range_is_rejected(tmp_path):
    proc = run_cli("stage=extract", "steer.layers=25-35", tmp_path=tmp_path)
    assert_one_line_error(proc, "steer.layers='25-35'", "layer 30 is out of range", "0-29")


def test_missing_data_file_names_where_to_put_it(tmp_path, data_dir, monkeypatch, capsys):
    empty = tmp_path / "data"
    empty.mkdir()
    proc = run_in_process(monkeypatch, capsys, "stage=extract", data_dir=empty, tmp_path=tmp_path)
    assert_one_line_error(proc, str(empty / "scans" / "AdvBench.csv"))


def test_csv_without_expected_column_is_rejected(tmp_path, data_dir, monkeypatch, capsys):
    bad = copy_data(data_dir, tmp_path / "data", "scans/AdvBench.csv")
    (bad / "scans" / "AdvBench.csv").write_text("prompt,target\nhello,world\n")
    proc = run_in_process(monkeypatch, capsys, "stage=extract", data_dir=bad, tmp_path=tmp_path)
    assert_one_line_error(proc, "goal", "AdvBench.csv")


def test_empty_evaluation_set_is_rejected(tmp_path, data_dir, monkeypatch, capsys):
    proc = run_in_process(monkeypatch, capsys, "stage=classify", "data.eval_sets=[]", tmp_path=tmp_path)
    assert_one_line_error(proc, "data.eval_sets is empty")
    bad = copy_data(data_dir, tmp_path / "data", "scans/MaliciousInstruct.txt")
    (bad / "scans" / "MaliciousInstruct.txt").write_text("\n")
    proc = run_in_process(monkeypatch, capsys, "stage=classify", data_dir=bad, tmp_path=tmp_path / "second")
    assert_one_line_error(proc, "MaliciousInstruct.txt")


@pytest.mark.parametrize(
    "override",
    [
        "classify.threshold=high",
        "steer.positions=everywhere",
        "stage=train",
        "capability.mmlu.shots=7",
        "capability.mmlu.subjects=[abstract_algebra,astrology]",
        "capability.perplexity.window=0",
        "tune.max_harmful_drop=2",
        "sweep.vary=beta",
        "analysis.segments=[20,10]",
        "align.train.autocast=fp8",
        "align.precisions=[bfloat16,auto]",
        "align.validation.sets=[alpaca_eval,nowhere]",
    ],
)
def test_other_bad_values_are_rejected(tmp_path, override, monkeypatch, capsys):
    proc = run_in_process(monkeypatch, capsys, override, tmp_path=tmp_path)
    assert_one_line_error(proc, override.split("=")[0])


def test_hard_examples_from_a_source_the_organism_does_not_learn_from_are_rejected(tmp_path, monkeypatch, capsys):
    # HarmfulQA is a reported set: nothing may mine it
    mined = "+align.mined={probe_tokens: 16, harmful: {harmfulqa: 100}}"
    proc = run_in_process(monkeypatch, capsys, "model=smollm2_organism", mined, tmp_path=tmp_path)
    assert_one_line_error(proc, "align.mined: harmful sources ['harmfulqa'] are not in align.harmful")


def test_an_organism_layer_to_train_past_its_base_is_rejected_at_config_time(tmp_path, monkeypatch, capsys):
    proc = run_in_process(monkeypatch, capsys, "model=smollm2_organism", "align.train.layers=20-30", tmp_path=tmp_path)
    assert_one_line_error(proc, "align.train.layers='20-30': layer 30 is out of range")


def test_a_candidate_layer_past_the_model_is_rejected_at_config_time(tmp_path, monkeypatch, capsys):
    proc = run_in_process(monkeypatch, capsys, "+model.grids.ablation_layers=[4,40]", tmp_path=tmp_path)
    assert_one_line_error(proc, "fr_ablation.candidate_layers", "layer 40 is out of range")
