"""Parallel jobs share the artifact store: two processes that need the same missing artifact build it once, and a
reader never finds a finished artifact missing or half replaced while another job writes the same key."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time
from pathlib import Path

from conftest import DEVICE

from scans.artifacts import ArtifactStore, read_json, write_json
from scans.errors import ArtifactError


def _build_once(root: str, counter: str, barrier) -> dict:
    store = ArtifactStore(root)
    barrier.wait()  # both jobs ask for the missing artifact at the same moment

    def build(tmp: Path) -> dict:
        with open(counter, "a") as fh:
            fh.write("built\n")
        time.sleep(0.5)
        (tmp / "data.txt").write_text("payload")
        return {"value": 42}

    return store.cached("m", "stage", "k", build)


def _job(root, counter, barrier, results):
    results.put(_build_once(root, counter, barrier))


def test_two_jobs_needing_the_same_missing_artifact_build_it_once(tmp_path):
    ctx = multiprocessing.get_context("fork")
    barrier, results = ctx.Barrier(2), ctx.Queue()
    counter = tmp_path / "builds.txt"
    jobs = [ctx.Process(target=_job, args=(str(tmp_path / "art"), str(counter), barrier, results)) for _ in range(2)]
    for j in jobs:
        j.start()
    for j in jobs:
        j.join(60)
    assert [j.exitcode for j in jobs] == [0, 0]
    assert [results.get(timeout=5), results.get(timeout=5)] == [{"value": 42}, {"value": 42}]
    assert counter.read_text() == "built\n"  # the second job waited on the lock, then read the first one's artifact
    store = ArtifactStore(tmp_path / "art")
    assert (
        store.is_complete("m", "stage", "k") and (store.path("m", "stage", "k") / "data.txt").read_text() == "payload"
    )
    assert [p.name for p in (tmp_path / "art" / "m" / "stage").iterdir()] == ["k"]  # no temporary folder left


def _writer(root: str, barrier, tag: str) -> None:
    store = ArtifactStore(root)
    barrier.wait()
    for _ in range(5):  # a job that computed the artifact itself and writes it, as the stages do
        with store.writing("m", "stage", "k", {"writer": tag}) as tmp:
            write_json(tmp / "result.json", {"value": 42})
            time.sleep(0.05)


def test_a_reader_never_sees_a_finished_artifact_vanish_while_others_write_it(tmp_path):
    ctx = multiprocessing.get_context("fork")
    barrier = ctx.Barrier(3)
    root = str(tmp_path / "art")
    jobs = [ctx.Process(target=_writer, args=(root, barrier, tag)) for tag in ("a", "b")]
    for j in jobs:
        j.start()
    store = ArtifactStore(root)
    barrier.wait()
    seen_complete, broken = False, 0
    deadline = time.time() + 30
    while any(j.is_alive() for j in jobs) and time.time() < deadline:
        if store.is_complete("m", "stage", "k"):
            seen_complete = True
            try:
                assert read_json(store.path("m", "stage", "k") / "result.json") == {"value": 42}
            except (FileNotFoundError, AssertionError, ArtifactError):
                broken += 1
        elif seen_complete:
            broken += 1  # it was finished, then it was gone
    for j in jobs:
        j.join(30)
    assert [j.exitcode for j in jobs] == [0, 0] and seen_complete and broken == 0
    first = read_json(store.path("m", "stage", "k") / "provenance.json")["writer"]
    assert first in ("a", "b")  # the first writer's folder stays; the later writes of the same key are dropped
    assert [p.name for p in (tmp_path / "art" / "m" / "stage").iterdir()] == ["k"]


# Two `stage=steer` jobs on one empty artifact store, each recording every artifact it writes (in `_writing`, the
# one place a folder is written), slowed down inside the write so that the jobs overlap.
RECORDER = r"""
import os, sys, time
from scans.artifacts import ArtifactStore
_writing = ArtifactStore._writing

def recorded(self, model, stage, key, provenance):
    with open(os.environ["SCANS_TEST_WRITES"], "a") as fh:
        fh.write(f"{stage}/{key}\n")
    time.sleep(0.2)
    return _writing(self, model, stage, key, provenance)

ArtifactStore._writing = recorded
from scans.cli import main
main()
"""


def test_two_steer_jobs_on_an_empty_store_build_each_shared_artifact_once(tiny_model_dir, data_dir, tmp_path):
    root = Path(__file__).resolve().parent.parent
    writes = tmp_path / "writes.txt"
    env = dict(os.environ, SCANS_DATA_DIR=str(data_dir), HF_HUB_OFFLINE="1", SCANS_TEST_WRITES=str(writes))
    args = [
        "model=local", f"model.source.path={tiny_model_dir}", "model.num_layers=2", f"model.device={DEVICE}",
        "model.hparams.steer_layers=0-1", "model.hparams.classify_layers=0-1", "model.hparams.threshold=0.5",
        "experiment=smoke", "model.dtype=float32", "generation.max_new_tokens=4", "methods=[default,scans_paper]",
        f"paths.artifacts={tmp_path / 'artifacts'}", "stage=steer",
    ]  # fmt: skip
    jobs = [
        subprocess.Popen(
            [sys.executable, "-c", RECORDER, *args, f"hydra.run.dir={tmp_path / f'out{i}'}"],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )  # fmt: skip
        for i in range(2)
    ]
    logs = [job.communicate(timeout=300)[0] for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    built = writes.read_text().split()
    stages = {b.split("/")[0] for b in built}
    assert {"extract", "classify", "responses"} <= stages  # vectors, σ(q)'s similarities, both rows' responses
    assert len(built) == len(set(built)), sorted(b for b in built if built.count(b) > 1)
    store = ArtifactStore(tmp_path / "artifacts")
    assert all(store.is_complete("local", *b.split("/")) for b in built)
