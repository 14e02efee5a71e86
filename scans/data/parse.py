"""Reading a dataset's files (or hub splits) into tables and checking each against its entry.

Files are parsed with pandas / json / pyarrow directly. The `datasets` file builders wrap the same parsers but add
a 1.3 s import, an Arrow cache on disk and ~1.5 s for MMLU's 114 files (pandas: 0.14 s); their URL support also
needs aiohttp, which the project does not depend on. `datasets` is used for hub ids only.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pandas as pd

from scans.data.fetch import OFFLINE_ENV_VARS, fetch_error, offline, short
from scans.data.spec import DatasetSpec
from scans.data.transforms import HUB_TRANSFORMS
from scans.errors import DataError


def flatten_nested(obj: Any, levels: tuple[str, ...], leaf: str, origin: str) -> pd.DataFrame:
    """{level0: {level1: [leaf, ...]}} -> rows (level0, level1, leaf), in the file's key order."""
    rows: list[dict[str, Any]] = []

    def walk(node: Any, keys: tuple[str, ...]) -> None:
        if len(keys) == len(levels):
            if not isinstance(node, list):
                raise DataError(f"{origin}: expected a list under {' / '.join(keys)}, found {type(node).__name__}")
            rows.extend({**dict(zip(levels, keys, strict=True)), leaf: item} for item in node)
        elif isinstance(node, dict):
            for key, child in node.items():
                walk(child, (*keys, key))
        else:
            raise DataError(f"{origin}: expected a JSON object at depth {len(keys)}, found {type(node).__name__}")

    walk(obj, ())
    return pd.DataFrame(rows, columns=[*levels, leaf])


def read_file(spec: DatasetSpec, path: Path, origin: str) -> pd.DataFrame:
    """Parse one file. `origin` (local path or URL) names it in errors."""
    options = dict(spec.read_options)
    if path.stat().st_size == 0:
        raise DataError(f"dataset {spec.name!r}: {origin} is empty (entry: {spec.origin})")
    try:
        if spec.format == "csv":
            names = options.get("names")
            # keep_default_na=False: text stays text ("None", "N/A" and "" are values, not NaN).
            return pd.read_csv(
                path, header=None if names else "infer", names=list(names) if names else None, keep_default_na=False
            )
        if spec.format == "parquet":
            return pd.read_parquet(path)
        if spec.format == "text":
            # Universal newlines, as Python (and the hub's text builders) iterate a file.
            with open(path, encoding="utf-8") as handle:
                lines = list(handle)
            if not options.get("keep_linebreaks", False):
                lines = [line.rstrip("\n") for line in lines]
            return pd.DataFrame({"text": lines})
        if spec.format == "jsonl":
            with open(path, encoding="utf-8") as handle:
                return pd.DataFrame.from_records([json.loads(line) for line in handle if line.strip()])
        data = json.loads(path.read_text(encoding="utf-8"))
        if spec.format == "json_nested":
            return flatten_nested(data, tuple(options["levels"]), options["leaf"], origin)
        if isinstance(data, dict) and "records" in options:
            data = data.get(options["records"])  # the list of records under one key ({"prompts": [...]})
        if isinstance(data, list) and all(isinstance(item, str) for item in data):
            return pd.DataFrame({"text": data})  # a JSON list of prompts
        if isinstance(data, list) and all(isinstance(item, dict) for item in data):
            return pd.DataFrame.from_records(data)
        raise DataError(f"dataset {spec.name!r}: {origin} is not a JSON list of strings or of objects")
    except (ValueError, OSError, UnicodeError) as error:  # parser, JSON, Arrow and decoding errors
        raise DataError(f"dataset {spec.name!r}: could not read {origin} as {spec.format} ({short(error)})") from error


def read_hub(spec: DatasetSpec) -> list[tuple[str, pd.DataFrame]]:
    """(split, table) per hub split, through `datasets.load_dataset` pinned at the revision."""
    assert spec.hub is not None
    if offline():
        raise fetch_error(spec, f"offline: {' or '.join(OFFLINE_ENV_VARS)} is set")
    import datasets  # slow import (~1 s), needed only here

    parts = []
    for split in spec.hub.splits:
        try:
            loaded = datasets.load_dataset(spec.hub.repo_id, spec.hub.config, revision=spec.hub.revision, split=split)
        except Exception as error:  # the hub client raises many types (connection, HTTP, offline, not found)
            raise fetch_error(spec, short(error)) from error
        table = loaded.to_pandas()
        transform = HUB_TRANSFORMS[spec.hub.transform] if spec.hub.transform else None
        parts.append((split, transform(table, split) if transform else table))
    return parts


def checked(spec: DatasetSpec, table: pd.DataFrame, origin: str, filename: str | None) -> pd.DataFrame:
    """Validate one file's table (columns, rows) and add the columns parsed from its name."""
    # The text and label columns are the file's own unless a transform makes them (RepE's pairs).
    own = [] if spec.transform else [c for c in (spec.text_column, spec.label_column) if c]
    missing = [c for c in dict.fromkeys([*spec.columns, *own]) if c not in table.columns]
    if missing:
        found = ", ".join(repr(str(c)) for c in table.columns) or "none"
        raise DataError(
            f"dataset {spec.name!r}: {origin} has no column {', '.join(map(repr, missing))} (columns found: {found}; "
            f"entry: {spec.origin})"
        )
    if table.empty:
        raise DataError(f"dataset {spec.name!r}: {origin} has no rows (entry: {spec.origin})")
    if spec.file_columns and filename is not None:
        match = re.match(spec.file_columns, filename)
        if match is None:
            raise DataError(
                f"dataset {spec.name!r}: file name {filename!r} does not match {spec.file_columns!r} ({origin})"
            )
        table = table.assign(**match.groupdict())
    return table
