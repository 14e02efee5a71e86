"""Faults: a stage killed mid-write (SIGKILL) reruns to the same artifacts; a damaged artifact fails in one line that
names the file and the command that rebuilds it."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import DEVICE
from hydra import compose, initialize_config_dir

from scans.artifacts import (
    PROVENANCE,
    ArtifactStore,
    atomic_dir,
    load_tensors,
    read_json,
    read_jsonl,
    remove_stale_tmp,
    save_tensors,
    write_json,
    write_jsonl,
)
from scans.cli import CONFIG_DIR
from scans.errors import ArtifactError
from scans.stages import Run, run_stage

ROOT = Path(__file__).resolve().parent.parent
# Runs the CLI with the artifact writers wrapped: the SCANS_TEST_KILL_AT-th write leaves its file half written and
# the process SIGKILLs itself (deterministic, unlike a timed kill from outside).
KILLER = """
import os, signal, sys
from pathlib import Path
import scans.artifacts as a

at, calls = int(os.environ["SCANS_TEST_KILL_AT"]), []

def wrap(name):
    real = getattr(a, name)

    def write(path, *args, **kwargs):
        real(path, *args, **kwargs)
        calls.append(str(path))
        if len(calls) == at:
            data = Path(path).read_bytes()
            Path(path).write_bytes(data[: len(data) // 2])
            sys.stderr.write("killing at " + str(path) + "\\n")
            sys.stderr.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    setattr(a, name, write)

for name in ("write_json", "write_jsonl", "save_tensors"):
    wrap(name)
from scans.cli import main
main()
"""
# extract's writes, in order: vectors.safetensors, anchors.jsonl, then provenance.json (inside ArtifactStore.writing)
EXTRACT_FILES = ("vectors.safetensors", "anchors.jsonl", PROVENANCE)


def overrides(tiny_model_dir: Path, artifacts: Path) -> list[str]:
    return [
        "model=local", f"model.source.path={tiny_model_dir}", "model.num_layers=2", f"model.device={DEVICE}",
        "model.hparams.steer_layers=0-1", "model.hparams.classify_layers=0-1", "model.hparams.threshold=0.5",
        "experiment=smoke", "model.dtype=float32", f"paths.artifacts={artifacts}",
    ]  # fmt: skip


def run_cli(stage: str, tiny_model_dir: Path, artifacts: Path, data_dir: Path, kill_at: int | None = None):
    env = dict(os.environ, SCANS_DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    env.pop("SCANS_TEST_KILL_AT", None)
    head = [sys.executable, "-m", "scans"]
    if kill_at is not None:
        env["SCANS_TEST_KILL_AT"] = str(kill_at)
        head = [sys.executable, "-c", KILLER]
    args = [*overrides(tiny_model_dir, artifacts), f"stage={stage}", f"hydra.run.dir={artifacts.parent / 'out'}"]
    return subprocess.run([*head, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def extract_in_process(tiny_model_dir: Path, artifacts: Path) -> Path:
    """`extract` run here (the tiny model stays loaded between runs), with the CLI runs' config: its folder."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=overrides(tiny_model_dir, artifacts))
    r = Run(cfg)
    run_stage("extract", r)
    return r.store.path(r.model_name, "extract", r.extract_key)


@pytest.fixture(scope="module")
def baseline(tiny_model_dir, tmp_path_factory, data_dir):
    """An uninterrupted `extract` on the tiny model: its artifact folder."""
    folder = extract_in_process(tiny_model_dir, tmp_path_factory.mktemp("baseline") / "artifacts")
    assert sorted(p.name for p in folder.iterdir()) == sorted(EXTRACT_FILES)
    return folder


def assert_same_artifact(folder: Path, expected: Path) -> None:
    from safetensors import safe_open

    assert sorted(p.name for p in folder.iterdir()) == sorted(p.name for p in expected.iterdir())
    got, want = load_tensors(folder / "vectors.safetensors"), load_tensors(expected / "vectors.safetensors")
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name
    metadata = []
    for path in (folder, expected):
        with safe_open(str(path / "vectors.safetensors"), "pt") as f:
            metadata.append(f.metadata())
    assert metadata[0] == metadata[1]
    assert (folder / "anchors.jsonl").read_bytes() == (expected / "anchors.jsonl").read_bytes()
    got, want = read_json(folder / PROVENANCE), read_json(expected / PROVENANCE)
    assert {k: v for k, v in got.items() if k != "environment"} == {k: v for k, v in want.items() if k != "environment"}


def is_tmp(path: Path) -> bool:
    return path.name.startswith(".") and path.name.endswith(".tmp")


# SIGKILL mid-write, then a rerun.


def test_sigkill_mid_write_then_rerun_equals_an_uninterrupted_run(baseline, tiny_model_dir, data_dir, tmp_path):
    """Killed while writing provenance.json, the last file before the folder is renamed into place (every other
    point of `writing` is earlier and leaves less; the unit tests below cover the rename itself)."""
    artifacts, kill_at = tmp_path / "artifacts", 3
    proc = run_cli("extract", tiny_model_dir, artifacts, data_dir, kill_at=kill_at)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-3000:]
    killed_at = proc.stderr.strip().splitlines()[-1]
    assert killed_at.endswith(EXTRACT_FILES[kill_at - 1]), killed_at
    stage_dir = artifacts / baseline.parent.parent.name / "extract"
    leftovers = list(stage_dir.iterdir())
    # Nothing that looks finished: only the hidden temporary folder, with the half-written file in it.
    assert len(leftovers) == 1 and is_tmp(leftovers[0]) and leftovers[0].name.startswith(f".{baseline.name}.")
    assert all(is_tmp(p.parent) for p in artifacts.rglob(PROVENANCE))
    assert not ArtifactStore(artifacts).is_complete(baseline.parent.parent.name, "extract", baseline.name)
    half = leftovers[0] / EXTRACT_FILES[kill_at - 1]
    assert 0 < half.stat().st_size < (baseline / half.name).stat().st_size

    proc = run_cli("extract", tiny_model_dir, artifacts, data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in stage_dir.iterdir()] == [baseline.name]  # the dead writer's folder is gone
    assert_same_artifact(stage_dir / baseline.name, baseline)


def pid_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True
    return True


def test_stale_tmp_folders_are_removed_only_when_their_writer_is_dead(tmp_path):
    target = tmp_path / "m" / "stage" / "k"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        from scans.artifacts import _owner_tag

        host = _owner_tag().split("-")[0]
        target.parent.mkdir(parents=True)
        names = {
            "dead": f".k.{host}-{dead.pid}-abc.tmp",
            "alive": f".k.{host}-{alive.pid}-abc.tmp",
            "other_host": f".k.00000000-{dead.pid}-abc.tmp",
            "other_target": f".kk.{host}-{dead.pid}-abc.tmp",
            "legacy": ".k.abc123.tmp",
        }
        for name in names.values():
            (target.parent / name).mkdir()
            (target.parent / name / "half.jsonl").write_text('{"a"')
        store = ArtifactStore(tmp_path)
        with store.writing("m", "stage", "k", {}) as tmp:
            write_jsonl(tmp / "rows.jsonl", [{"a": 1}])
        left = {p.name for p in target.parent.iterdir()}
        kept = {names[n] for n in ("alive", "other_host", "other_target", "legacy")}
        if not pid_exists(dead.pid):  # (not reused meanwhile by another process)
            assert left == {"k"} | kept
        assert kept <= left
        assert store.is_complete("m", "stage", "k") and read_jsonl(target / "rows.jsonl") == [{"a": 1}]
        assert remove_stale_tmp(target) == []
    finally:
        alive.kill()
        alive.wait()


def test_rewriting_a_target_never_deletes_it_in_place(tmp_path, monkeypatch):
    """The old folder is renamed aside before the new one goes in: a kill between leaves no half-deleted folder with
    its provenance still there."""
    target = tmp_path / "m" / "stage" / "k"
    with atomic_dir(target) as tmp:
        (tmp / PROVENANCE).write_text("{}")
        (tmp / "old.bin").write_bytes(b"old")
    removed = []
    monkeypatch.setattr(shutil, "rmtree", lambda p, **kw: removed.append(Path(p)))
    with atomic_dir(target) as tmp:
        (tmp / "new.bin").write_bytes(b"new")
    assert sorted(p.name for p in target.iterdir()) == ["new.bin"]
    assert len(removed) == 1 and is_tmp(removed[0]) and (removed[0] / "old.bin").read_bytes() == b"old"


# Damaged artifacts.


def one_line(exc: pytest.ExceptionInfo) -> str:
    message = str(exc.value)
    assert "\n" not in message, message
    return message


def make_artifact(root: Path) -> Path:
    store = ArtifactStore(root)
    with store.writing("tiny", "responses", "k1", {}) as tmp:
        write_json(tmp / "summary.json", {"n": 3, "refusals": [1, 2, 3]})
        write_jsonl(tmp / "responses.jsonl", [{"prompt": f"p{i}", "response": "r\u2028s"} for i in range(3)])
        save_tensors(tmp / "scores.safetensors", {"scores": torch.arange(64.0)})
    return store.path("tiny", "responses", "k1")


@pytest.mark.parametrize(
    "name, read, cut",
    [
        ("summary.json", read_json, 0.5),
        ("summary.json", read_json, 0.0),
        ("responses.jsonl", read_jsonl, 0.5),
        ("scores.safetensors", load_tensors, 0.5),
        ("scores.safetensors", load_tensors, 0.99),
        ("scores.safetensors", load_tensors, 0.0),
    ],
)
def test_truncated_artifact_names_the_file_and_the_rebuild_command(tmp_path, name, read, cut):
    folder = make_artifact(tmp_path / "my artifacts")
    path = folder / name
    read(path)  # whole, it reads
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * cut)])
    with pytest.raises(ArtifactError) as exc:
        read(path)
    message = one_line(exc)
    assert message.startswith(f"corrupt artifact {path} (")
    # the folder first (it looks complete and would be reused), then the stage that writes it (steer: `responses/`)
    assert message.endswith(f"; rebuild it with: rm -rf {shlex.quote(str(folder))} && python -m scans stage=steer")


def test_jsonl_error_names_the_line_and_keeps_unicode_line_separators(tmp_path):
    folder = make_artifact(tmp_path)
    assert read_jsonl(folder / "responses.jsonl")[0]["response"] == "r\u2028s"
    path = folder / "responses.jsonl"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ArtifactError, match=r"invalid JSON at line 3"):
        read_jsonl(path)
    path.write_bytes(b"\xff\xfe" + path.read_bytes())
    with pytest.raises(ArtifactError, match="not UTF-8 text at byte 0"):
        read_jsonl(path)


def test_missing_file_of_a_complete_artifact_is_corrupt_but_elsewhere_is_not_found(tmp_path):
    folder = make_artifact(tmp_path)
    (folder / "scores.safetensors").unlink()
    with pytest.raises(ArtifactError) as exc:
        load_tensors(folder / "scores.safetensors")
    assert "missing from a complete artifact folder" in one_line(exc) and "rm -rf" in one_line(exc)
    with pytest.raises(FileNotFoundError):
        read_json(tmp_path / "nowhere.json")


def test_corrupt_file_outside_an_artifact_folder_is_named_alone(tmp_path):
    path = tmp_path / "loose.json"
    path.write_text('{"a": ')
    with pytest.raises(ArtifactError) as exc:
        read_json(path)
    message = one_line(exc)
    assert message.startswith(f"corrupt artifact {path} (invalid JSON at line 1") and "rm -rf" not in message


def test_cli_reports_a_truncated_artifact_in_one_line_and_its_command_rebuilds_it(
    baseline, tiny_model_dir, data_dir, tmp_path
):
    artifacts = tmp_path / "artifacts"
    shutil.copytree(baseline.parent.parent.parent, artifacts)
    folder = artifacts / baseline.relative_to(baseline.parent.parent.parent)
    vectors = folder / "vectors.safetensors"
    vectors.write_bytes(vectors.read_bytes()[:100])
    proc = run_cli("anchor", tiny_model_dir, artifacts, data_dir)  # reads extract's vectors
    assert proc.returncode == 2, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert [line for line in proc.stderr.splitlines() if line.startswith("error: ")] == [last]
    assert last.startswith(f"error: corrupt artifact {vectors} (unreadable safetensors: ")
    match = re.search(r"rebuild it with: (rm -rf (\S+)) && python -m scans stage=extract$", last)
    assert match and Path(shlex.split(match.group(2))[0]) == folder, last
    subprocess.run(match.group(1), shell=True, check=True)  # the command as printed, then the stage (in-process)
    assert not folder.exists()
    assert extract_in_process(tiny_model_dir, artifacts) == folder
    assert_same_artifact(folder, baseline)
    assert not any(is_tmp(p) for p in folder.parent.iterdir())
