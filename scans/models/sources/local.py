"""`source.kind: local`: a transformers folder on disk (`model=local`, and the organism once it is trained)."""

from __future__ import annotations

from pathlib import Path

from scans.errors import ModelError
from scans.models.sources.base import Location, depth_of_folder, plain, register


def folder(cfg) -> Path:
    path = Path(str(cfg.source.path))
    if not path.is_dir():
        raise ModelError(f"model folder {path} does not exist")
    return path


class Local:
    """`path`: the folder `from_pretrained` reads."""

    def identity(self, cfg) -> dict:
        return plain(cfg.source)

    def materialize(self, cfg, cache_dir: str | Path | None = None) -> Location:
        return Location(str(folder(cfg)))

    def num_layers(self, cfg, cache_dir: str | Path | None = None) -> int:
        return depth_of_folder(folder(cfg))


register("local", Local())
