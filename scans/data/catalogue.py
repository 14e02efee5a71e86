"""The dataset catalogue: every entry of `configs/data/sets/*.yaml`, plus a run's own sets.

A run adds sets of its own in two ways (`configure`, called when a run's config is checked):
- `data.sets_dirs`: folders of further `<name>.yaml` entries;
- `data.sets.<name>`: an entry given in the config or on the command line
  (`+data.sets.mine='{path: /abs/mine.csv, format: csv, text_column: prompt, label: benign}'`).
A name may be defined once: a run's set cannot silently replace a built-in one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

import yaml

from scans.data.spec import DatasetSpec, spec_from_mapping
from scans.errors import ConfigError, DataError

T = TypeVar("T")
SETS_DIR = Path(__file__).resolve().parent.parent.parent / "configs" / "data" / "sets"

# The run's own entries (configure replaces them as a whole, so one run's sets never leak into the next).
_extra: dict[str, DatasetSpec] = {}


def read_entries(folder: Path, what: str, make: Callable[[str, Any, str], T]) -> dict[str, T]:
    """Every `<name>.yaml` of `folder`, made an entry by `make(name, mapping, origin)` (a dataset here, an attack in
    `scans.data.attacks`)."""
    if not folder.is_dir():
        raise ConfigError(f"{what} folder {folder} does not exist")
    out = {}
    for path in sorted(folder.glob("*.yaml")):
        try:
            entry = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as error:
            raise ConfigError(f"{what} file {path} is not valid YAML ({' '.join(str(error).split())})") from error
        out[path.stem] = make(path.stem, entry, str(path))
    return out


def _read_dir(folder: Path) -> dict[str, DatasetSpec]:
    return read_entries(folder, "dataset", spec_from_mapping)


@cache
def builtin() -> dict[str, DatasetSpec]:
    """The built-in entries, read once per process."""
    return _read_dir(SETS_DIR)


def _merge(into: dict[str, DatasetSpec], specs: Mapping[str, DatasetSpec]) -> None:
    for name, spec in specs.items():
        if name in into:
            raise ConfigError(f"dataset {name!r} is defined twice: {into[name].origin} and {spec.origin}")
        into[name] = spec


def configure(sets: Mapping[str, Any] | None = None, sets_dirs: Iterable[str | Path] = ()) -> None:
    """Make a run's own entries known (replacing those of any earlier run in this process)."""
    extra: dict[str, DatasetSpec] = {}
    for folder in sets_dirs:
        _merge(extra, _read_dir(Path(folder).expanduser()))
    _merge(extra, {n: spec_from_mapping(n, e, f"data.sets.{n}") for n, e in (sets or {}).items()})
    clash = sorted(set(extra) & set(builtin()))
    if clash:
        name = clash[0]
        raise ConfigError(
            f"dataset {name!r} ({extra[name].origin}) has the name of a built-in entry ({builtin()[name].origin}); "
            "give it another name"
        )
    _extra.clear()
    _extra.update(extra)


def configure_from(cfg) -> None:
    """`configure` from a run's config (`data.sets`, `data.sets_dirs`; both optional)."""
    from omegaconf import OmegaConf

    data = cfg.data
    sets = OmegaConf.to_container(data.sets, resolve=True) if data.get("sets") else {}
    configure(sets, list(data.get("sets_dirs") or []))


def catalogue() -> dict[str, DatasetSpec]:
    """Every dataset entry by name: the built-in ones, then the run's."""
    return {**builtin(), **_extra}


def get_spec(name: str) -> DatasetSpec:
    """The entry for `name`; DataError listing the known names otherwise."""
    specs = catalogue()
    try:
        return specs[name]
    except KeyError:
        raise DataError(
            f"unknown dataset {name!r}; known datasets: {', '.join(sorted(specs))} (add one as "
            f"{SETS_DIR}/{name}.yaml, see {SETS_DIR / 'README.md'})"
        ) from None


@dataclass(frozen=True)
class EvalSet:
    """One evaluation set: the prompts of `dataset` that have `label`."""

    name: str
    dataset: str
    label: str


def eval_sets() -> dict[str, EvalSet]:
    """Every evaluation set of the catalogue by name (a Table 2 column each)."""
    out: dict[str, EvalSet] = {}
    for dataset, spec in catalogue().items():
        for name, label in spec.evaluation_sets.items():
            if name in out:
                raise ConfigError(
                    f"evaluation set {name!r} is given by two datasets, {out[name].dataset!r} and {dataset!r}"
                )
            out[name] = EvalSet(name, dataset, label)
    return out


def get_eval_set(name: str) -> EvalSet:
    """The evaluation set `name`; DataError listing the known ones (and saying why a held-back set is not one)."""
    sets = eval_sets()
    if name in sets:
        return sets[name]
    specs = catalogue()
    if name in specs and specs[name].held_back:
        raise DataError(f"dataset {name!r} is held back for independent checks; it is not an evaluation set")
    raise DataError(f"unknown evaluation set {name!r}; known: {', '.join(sets)}")
