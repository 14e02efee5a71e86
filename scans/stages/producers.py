"""The artifacts a run can be asked for by name, and the stages that produce them.

A stage registers each artifact it writes as a `Producer`: its folder (`stage`), `key(run, **inputs)`, computed
without a forward pass, a fit or a model load (upstream values it depends on are inputs, never computed by the key),
`build(run, tmp, **inputs)`, which writes the files into a temporary folder and returns the provenance fields to
record, and `load(run, path, **inputs)`. `Run.artifact(name, **inputs)` builds only what is missing, under the
artifact's lock (`ArtifactStore.obtain`), so two jobs that need the same artifact build it once.

A `Producer` whose `stage` is None is a view: a value computed from other artifacts each time it is asked for (the
validation flags of a method, from its response artifacts); it has no folder of its own.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Producer:
    stage: str | None
    key: Callable[..., str] | None
    build: Callable[..., Any] | None
    load: Callable[..., Any]


@dataclass(frozen=True)
class Built:
    """A folder artifact whose callers need its path and its summary (what a method trained in `prepare`)."""

    path: Path
    summary: Any


PRODUCERS: dict[str, Producer] = {}


def produces(name: str, stage: str, key: Callable[..., str], load: Callable[..., Any]):
    """Register the decorated `build(run, tmp, **inputs)` as the producer of artifact `name`."""

    def register(build: Callable[..., Any]) -> Callable[..., Any]:
        PRODUCERS[name] = Producer(stage, key, build, load)
        return build

    return register


def view(name: str):
    """Register the decorated `value(run, **inputs)` as artifact `name`, computed from other artifacts each time."""

    def register(value: Callable[..., Any]) -> Callable[..., Any]:
        PRODUCERS[name] = Producer(None, None, None, lambda run, _path, **inputs: value(run, **inputs))
        return value

    return register
