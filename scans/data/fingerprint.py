"""What identifies a dataset's data, for provenance, artifact keys and the in-process caches."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from scans.data.catalogue import get_spec
from scans.data.fetch import data_dir, local_files, local_paths, reads_locally
from scans.errors import DataError


def data_source(name: str) -> str:
    """Where `load_table(name)` reads from now: the local file(s), or the pinned remote source."""
    spec = get_spec(name)
    if not reads_locally(spec):
        return spec.remote
    try:
        return " ".join(str(p) for p in local_paths(spec))
    except DataError:
        return " ".join(spec.local)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _listing_name(path: Path) -> str:
    root = data_dir()
    return path.relative_to(root).as_posix() if root is not None and path.is_relative_to(root) else path.as_posix()


def data_fingerprint(name: str) -> str:
    """sha256 (hex) identifying the data that `load_table(name)` reads, for provenance and artifact keys.

    Local, one file: the file's sha256 (the same value as in shared/data/SHA256SUMS). Local, several files: the
    sha256 of their `<sha256>  <path relative to SCANS_DATA_DIR>` lines in sorted path order (SHA256SUMS format).
    Network: the sha256 of the pinned source string (URLs at a commit, or hub id@revision), which fixes the content.
    """
    spec = get_spec(name)
    if not reads_locally(spec):
        return hashlib.sha256(spec.remote.encode()).hexdigest()
    files = sorted(local_files(spec), key=_listing_name)
    if len(files) == 1:
        return _sha256_file(files[0])
    listing = "".join(f"{_sha256_file(p)}  {_listing_name(p)}\n" for p in files)
    return hashlib.sha256(listing.encode()).hexdigest()


def files_stamp(name: str) -> tuple | None:
    """What identifies the data a dataset would be read from now (the entry itself, and the path, size and mtime of
    each local file or the pinned remote source), or None when the files cannot be listed (load_table then raises
    the precise error)."""
    spec = get_spec(name)
    if not reads_locally(spec):
        return (spec, "remote")
    try:
        return (spec, *((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in local_files(spec)))
    except (DataError, OSError):
        return None


def dataset_key(name: str) -> str:
    """What an artifact key holds of a dataset: its data (`data_fingerprint`) and how the entry reads it (format,
    columns, label rule, parser options, transforms), so that an edited entry, not only an edited file, is a new key."""
    spec = get_spec(name)
    reading = {
        "path": list(spec.local),  # the files' read order (the fingerprint lists them sorted)
        "format": spec.format,
        "text_column": spec.text_column,
        "label": spec.label,
        "label_column": spec.label_column,
        "label_values": sorted(spec.label_values),
        "read_options": sorted((k, repr(v)) for k, v in spec.read_options),
        "file_columns": spec.file_columns,
        "transform": spec.transform,
        "hub_transform": spec.hub.transform if spec.hub is not None else None,
    }
    payload = json.dumps({"data": data_fingerprint(name), "reading": reading}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()
