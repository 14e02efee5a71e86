"""Parallel jobs share the artifact store: two processes that need the same missing artifact build it once, and a
reader never finds a finished artifact missing or half replaced while another job writes the same key."""

from __future__ import annotations

import multiprocessing
import time
from pathlib import Path

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
