"""Loading a dataset of the catalogue (scans.data.catalogue) as a table, or as labelled prompts.

Every entry yields a table (`load_table`); entries with a label rule also yield prompts (`load_prompts`), each
labelled `harmful` or `benign` (reference §5.1 gives the paper's sets and counts). Where the files come from is
scans.data.fetch, how they are parsed scans.data.parse, what identifies them scans.data.fingerprint.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from scans.data.catalogue import catalogue, get_spec
from scans.data.fetch import download, local_files, reads_locally
from scans.data.fingerprint import data_source, files_stamp
from scans.data.parse import checked, read_file, read_hub
from scans.data.spec import LABELS
from scans.data.transforms import TRANSFORMS
from scans.errors import DataError

log = logging.getLogger(__name__)
_SHOWN = 3  # rows named in a one-line error before "..."


@dataclass(frozen=True)
class Prompt:
    """One query with its ground-truth label. `meta` (row index, other columns) is not part of equality."""

    text: str
    label: str  # "harmful" | "benign"
    source: str  # dataset name
    meta: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def load_table(name: str) -> pd.DataFrame:
    """The dataset as one table (all files concatenated in order, transformed, validated).

    Raises DataError for an unknown name, a missing local file, a failed download, a file that cannot be parsed or
    is empty, a missing expected column (naming the file, the column and the columns found) or a table with no rows.
    """
    spec = get_spec(name)
    parts: list[pd.DataFrame] = []
    if reads_locally(spec):
        for path in local_files(spec):
            parts.append(checked(spec, read_file(spec, path, str(path)), str(path), path.name))
    elif spec.urls:
        for url in spec.urls:
            path = download(spec, url)
            parts.append(checked(spec, read_file(spec, path, url), url, url.rsplit("/", 1)[-1]))
    else:
        for split, table in read_hub(spec):
            parts.append(checked(spec, table, f"{spec.remote} split {split!r}", None))
    table = pd.concat(parts, ignore_index=True) if len(parts) > 1 else parts[0].reset_index(drop=True)
    if spec.transform is not None:
        table = TRANSFORMS[spec.transform](table)
    if table.empty:
        raise DataError(f"dataset {name!r} has no rows after reading {data_source(name)}")
    return table


# load_prompts' results by (name, files_stamp): the disjointness rule reads every blocked set for each pool it
# checks, and parsing the same files again and again cost the tune stage most of its time on a small model.
_PROMPTS: dict[tuple, list[Prompt]] = {}


def load_prompts(name: str) -> list[Prompt]:
    """The dataset's prompts in file order, texts stripped, each labelled harmful/benign (read once per process and
    entry and set of files: an edited entry or a changed file is read again).

    `meta` holds the row index in the table (`row`) and every other column of that row (e.g. XSTest `type`).
    Prompts that appear more than once are logged (`duplicates: warn`, the default) or refused (`duplicates: error`).
    """
    stamp = files_stamp(name)
    if stamp is not None and (name, stamp) in _PROMPTS:
        return list(_PROMPTS[(name, stamp)])
    prompts = _read_prompts(name)
    if stamp is not None:
        _PROMPTS[(name, stamp)] = prompts
    return list(prompts)


def _rows(rows: list[int]) -> str:
    return ", ".join(map(str, rows[:_SHOWN])) + (", ..." if len(rows) > _SHOWN else "")


def _read_prompts(name: str) -> list[Prompt]:
    spec = get_spec(name)
    if not spec.is_prompt_set:
        prompt_sets = ", ".join(sorted(n for n, s in catalogue().items() if s.is_prompt_set))
        raise DataError(f"dataset {name!r} is a table, not a prompt set; use load_table. Prompt sets: {prompt_sets}")
    assert spec.text_column is not None
    table = load_table(name)
    for column in (spec.text_column, spec.label_column):
        if column is not None and column not in table.columns:
            found = ", ".join(map(repr, map(str, table.columns)))
            raise DataError(f"dataset {name!r}: no column {column!r} in {data_source(name)} (columns found: {found})")
    texts = table[spec.text_column]
    empty = [i for i, t in enumerate(texts) if not isinstance(t, str) or not t.strip()]
    if empty:
        raise DataError(
            f"dataset {name!r}: {len(empty)} row(s) with an empty {spec.text_column!r} (rows {_rows(empty)}) in "
            f"{data_source(name)}"
        )
    if spec.label is not None:
        labels = [spec.label] * len(table)
    else:
        values = dict(spec.label_values)
        raw = [str(v) for v in table[spec.label_column]]
        bad: dict[str, list[int]] = defaultdict(list)
        for i, value in enumerate(raw):
            if value not in values:
                bad[value].append(i)
        if bad:
            listed = "; ".join(f"{v!r} (rows {_rows(rows)})" for v, rows in bad.items())
            raise DataError(
                f"dataset {name!r}: column {spec.label_column!r} of {data_source(name)} has values outside "
                f"label_values {dict(values)} ({spec.origin}): {listed}"
            )
        labels = [values[v] for v in raw]
    assert all(label in LABELS for label in labels)
    prompts = [
        Prompt(text=text.strip(), label=label, source=name, meta={"row": row, **record})
        for row, (text, label, record) in enumerate(
            zip(texts, labels, table.drop(columns=[spec.text_column]).to_dict("records"), strict=True)
        )
    ]
    _check_duplicates(spec, prompts)
    return prompts


def _check_duplicates(spec, prompts: list[Prompt]) -> None:
    """Log (or, with `duplicates: error`, refuse) prompts whose stripped text occurs more than once in the set."""
    rows: dict[str, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        rows[p.text].append(i)
    repeated = {t: r for t, r in rows.items() if len(r) > 1}
    if not repeated:
        return
    extra = sum(len(r) - 1 for r in repeated.values())
    examples = "; ".join(f"rows {_rows(r)}: {t[:60]!r}" for t, r in list(repeated.items())[:_SHOWN])
    message = (
        f"dataset {spec.name!r}: {len(repeated)} prompt(s) appear more than once ({extra} extra row(s); {examples})"
    )
    if spec.duplicates == "error":
        raise DataError(f"{message}; remove them, or set `duplicates: warn` in {spec.origin} to keep them")
    log.warning("%s; all are kept", message)
