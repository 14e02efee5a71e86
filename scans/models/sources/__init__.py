"""Model sources by `model.source.kind`: a registry that `load_model` dispatches to, one small module per kind.

Built in: `hub`, `local`, `gguf_wheel`, `gguf_split_wheels`. Code above the models layer adds its own kinds with
`register` (the organism, built by a stage), so the loader never needs to know about them.
"""

from __future__ import annotations

from scans.models.sources import gguf_split_wheels, gguf_wheel, hub, local  # noqa: F401  (they register themselves)
from scans.models.sources.base import Location, Source, get, known, register

__all__ = ["Location", "Source", "get", "known", "register"]
