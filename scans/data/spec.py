"""What one dataset entry says: where its files are, how to read them and how to label its prompts.

An entry is a YAML file of `configs/data/sets/` (the built-in catalogue), of a folder listed in `data.sets_dirs`, or
a mapping under `data.sets` given on the command line; `configs/data/sets/README.md` documents the fields. Every
check here runs when the catalogue is read, so a bad entry stops a run before any model is loaded.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from scans.data.labels import BENIGN, HARMFUL, LABELS
from scans.data.transforms import HUB_TRANSFORMS, TRANSFORMS
from scans.errors import ConfigError

FORMATS = ("csv", "json", "jsonl", "parquet", "text", "json_nested")
DUPLICATES = ("warn", "error")
# The eval sets a label-column dataset gets when its entry names none: `<name>_safe` and `<name>_unsafe`.
DEFAULT_SUFFIX = {BENIGN: "safe", HARMFUL: "unsafe"}
FIELDS = (
    "description", "path", "format", "columns", "text_column", "label", "label_column", "label_values",
    "read_options", "file_columns", "transform", "source", "eval_sets", "held_back", "duplicates",
)  # fmt: skip


@dataclass(frozen=True)
class HubSource:
    """A Hugging Face hub dataset pinned at a revision (a commit sha, so the data cannot change under us)."""

    repo_id: str
    revision: str
    config: str | None = None
    splits: tuple[str, ...] = ("train",)
    transform: str | None = None  # a name of scans.data.transforms.HUB_TRANSFORMS

    def __str__(self) -> str:
        config = f"/{self.config}" if self.config else ""
        return f"hf://datasets/{self.repo_id}@{self.revision}{config}[{'+'.join(self.splits)}]"


@dataclass(frozen=True)
class DatasetSpec:
    """How to find, read and label one dataset (the fields of a `configs/data/sets/<name>.yaml` entry).

    `local` holds paths (or glob patterns, expanded in sorted order), each absolute or relative to SCANS_DATA_DIR.
    The remote source, used when SCANS_DATA_DIR is unset, is `urls` (raw files pinned at a commit, one per local
    file) or `hub`; an entry with neither is read from its local paths only. `columns` must be present in every file
    read. `file_columns` is a regex with named groups matched against each file's name; every group becomes a column
    (e.g. the MMLU subject). `transform` names a function of scans.data.transforms run on the concatenated table. A
    prompt dataset names its `text_column` and a label rule: a fixed `label`, or `label_column` whose values
    `label_values` maps to harmful/benign. `eval_sets` maps each evaluation set the dataset gives (a Table 2 column)
    to the label its prompts have. A `held_back` set is kept for independent checks: the disjointness rule reads it,
    nothing evaluates on it.
    """

    name: str
    local: tuple[str, ...]
    format: str
    description: str = ""
    urls: tuple[str, ...] = ()
    hub: HubSource | None = None
    columns: tuple[str, ...] = ()
    text_column: str | None = None
    label: str | None = None
    label_column: str | None = None
    label_values: tuple[tuple[str, str], ...] = ()
    read_options: tuple[tuple[str, Any], ...] = ()
    file_columns: str | None = None
    transform: str | None = None
    eval_sets: tuple[tuple[str, str], ...] = ()
    held_back: bool = False
    duplicates: str = "warn"
    origin: str = field(default="", compare=False)  # the YAML file (or config key) the entry came from

    def __post_init__(self) -> None:
        def bad(message: str) -> ConfigError:
            return ConfigError(f"dataset {self.name!r} ({self.origin or 'entry'}): {message}")

        if not self.local:
            raise bad("`path` is missing; give the file's path (absolute, or relative to SCANS_DATA_DIR)")
        if self.format not in FORMATS:
            raise bad(f"format {self.format!r} is not one of {', '.join(FORMATS)}")
        if self.urls and self.hub is not None:
            raise bad("give one remote source, `urls` or `hub`, not both")
        if self.label is not None and self.label not in LABELS:
            raise bad(f"label {self.label!r} is not one of {', '.join(LABELS)}")
        if self.label is not None and self.label_column is not None:
            raise bad("give a fixed `label` or a `label_column`, not both")
        if self.label_column is not None and not self.label_values:
            raise bad("`label_column` needs `label_values`, a mapping of its values to harmful/benign")
        if (self.label is not None or self.label_column is not None) and self.text_column is None:
            raise bad("a labelled dataset needs a `text_column`")
        if self.text_column is not None and self.label is None and self.label_column is None:
            raise bad("a dataset with a `text_column` needs a label rule: `label` or `label_column`")
        wrong = sorted({v for _, v in self.label_values if v not in LABELS})
        if wrong:
            raise bad(f"label_values map to {', '.join(map(repr, wrong))}; each value must map to harmful or benign")
        if self.transform is not None and self.transform not in TRANSFORMS:
            raise bad(f"unknown transform {self.transform!r}; known: {', '.join(sorted(TRANSFORMS))}")
        if self.hub is not None and self.hub.transform is not None and self.hub.transform not in HUB_TRANSFORMS:
            raise bad(f"unknown hub transform {self.hub.transform!r}; known: {', '.join(sorted(HUB_TRANSFORMS))}")
        if self.duplicates not in DUPLICATES:
            raise bad(f"duplicates={self.duplicates!r}; expected one of {', '.join(DUPLICATES)}")
        if self.eval_sets and not self.is_prompt_set:
            raise bad("`eval_sets` needs a prompt dataset (a `text_column` and a label rule)")
        possible = {self.label} if self.label is not None else {v for _, v in self.label_values}
        for set_name, label in self.eval_sets:
            if label not in possible:
                raise bad(f"eval set {set_name!r} asks for {label!r} prompts; the label rule gives {sorted(possible)}")

    @property
    def is_prompt_set(self) -> bool:
        """True when the entry has a label rule, so `load_prompts` applies."""
        return self.label is not None or self.label_column is not None

    @property
    def remote(self) -> str:
        """The network source as one string (also what `data_fingerprint` hashes for network loads)."""
        if self.urls:
            return " ".join(self.urls)
        return str(self.hub) if self.hub is not None else ""

    @property
    def evaluation_sets(self) -> dict[str, str]:
        """Evaluation set name -> label: `eval_sets` as given, else the dataset itself for a one-label set, else
        `<name>_safe` and `<name>_unsafe` for a label column (none for a table or a held-back set)."""
        if self.held_back or not self.is_prompt_set:
            return {}
        if self.eval_sets:
            return dict(self.eval_sets)
        if self.label is not None:
            return {self.name: self.label}
        labels = dict.fromkeys(v for _, v in self.label_values)
        return {f"{self.name}_{DEFAULT_SUFFIX[lab]}": lab for lab in (BENIGN, HARMFUL) if lab in labels}


def _strings(value: Any, key: str, bad) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) and v.strip() for v in items):
        raise bad(f"`{key}` must be a string or a list of strings, not {value!r}")
    return tuple(items)


def _pairs(value: Any, key: str, bad) -> tuple[tuple[str, Any], ...]:
    if not isinstance(value, Mapping):
        raise bad(f"`{key}` must be a mapping, not {value!r}")
    return tuple((str(k), tuple(v) if isinstance(v, list) else v) for k, v in value.items())


def spec_from_mapping(name: str, entry: Mapping[str, Any], origin: str) -> DatasetSpec:
    """A DatasetSpec from one YAML entry (plain Python containers); ConfigError naming the entry if it is wrong."""

    def bad(message: str) -> ConfigError:
        return ConfigError(f"dataset {name!r} ({origin}): {message}")

    if not isinstance(entry, Mapping):
        raise bad(f"expected a mapping of fields, found {type(entry).__name__}")
    unknown = sorted(set(entry) - set(FIELDS))
    if unknown:
        raise bad(f"unknown field(s) {', '.join(map(repr, unknown))}; the fields are {', '.join(FIELDS)}")
    if "path" not in entry:
        raise bad("`path` is missing; give the file's path (absolute, or relative to SCANS_DATA_DIR)")
    if "format" not in entry:
        raise bad(f"`format` is missing; one of {', '.join(FORMATS)}")
    source = entry.get("source") or {}
    if not isinstance(source, Mapping) or set(source) - {"urls", "hub"}:
        raise bad("`source` must be a mapping with `urls` (a list of pinned raw files) or `hub`")
    hub = None
    if "hub" in source:
        h = source["hub"]
        if not isinstance(h, Mapping) or not {"repo", "revision"} <= set(h):
            raise bad("`source.hub` needs `repo` and `revision` (and optionally `config`, `splits`, `transform`)")
        hub = HubSource(
            repo_id=str(h["repo"]),
            revision=str(h["revision"]),
            config=h.get("config"),
            splits=_strings(h.get("splits", ["train"]), "source.hub.splits", bad),
            transform=h.get("transform"),
        )
    label_values = entry.get("label_values") or {}
    return DatasetSpec(
        name=name,
        local=_strings(entry["path"], "path", bad),
        format=str(entry["format"]),
        description=str(entry.get("description", "")),
        urls=_strings(source["urls"], "source.urls", bad) if "urls" in source else (),
        hub=hub,
        columns=_strings(entry.get("columns", []), "columns", bad),
        text_column=entry.get("text_column"),
        label=entry.get("label"),
        label_column=entry.get("label_column"),
        label_values=tuple((str(k), str(v)) for k, v in _pairs(label_values, "label_values", bad)),
        read_options=_pairs(entry.get("read_options") or {}, "read_options", bad),
        file_columns=entry.get("file_columns"),
        transform=entry.get("transform"),
        eval_sets=tuple((str(k), str(v)) for k, v in _pairs(entry.get("eval_sets") or {}, "eval_sets", bad)),
        held_back=bool(entry.get("held_back", False)),
        duplicates=str(entry.get("duplicates", "warn")),
        origin=origin,
    )
