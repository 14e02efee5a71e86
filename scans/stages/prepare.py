"""Stage `prepare`: what each method must fit or train before it can run (SafeDecoding's expert adapter, DRO's soft
prompt, the false-refusal direction), each a cached artifact of its own; methods with nothing to fit do nothing.

A method names its artifacts (`artifact_key(run, part)`) and builds them (`build_artifact(run, tmp, part)`, which
returns the summary); this stage registers them as the `prepared` artifact, so a method asks for one with
`run.artifact("prepared", method=self, part=...)` and never imports this module."""

from __future__ import annotations

import logging
from pathlib import Path

from scans import methods
from scans.artifacts import read_json, write_json
from scans.stages.context import Run
from scans.stages.producers import Built, produces

log = logging.getLogger(__name__)
STAGE = "prepare"
SUMMARY = "summary.json"


def _key(r: Run, method, part: str | None = None) -> str:
    return method.artifact_key(r, part)


def _load(r: Run, path: Path, method, part: str | None = None) -> Built:
    return Built(path, read_json(path / SUMMARY))


@produces("prepared", STAGE, _key, _load)
def _build(r: Run, tmp: Path, method, part: str | None = None) -> dict:
    write_json(tmp / SUMMARY, method.build_artifact(r, tmp, part))
    return {"method": method.name}


def run(r: Run) -> None:
    for method in methods.rows(r):
        if method.prepare(r) is not None:
            log.info("prepare: %s ready", method.name)
