"""Where a dataset's files are: a local folder (SCANS_DATA_DIR, or absolute paths), or a pinned remote source.

1. `$SCANS_DATA_DIR/<path>` when the environment variable SCANS_DATA_DIR is set (the folder has the layout of
   `shared/data`, whose MANIFEST.md names every file's repository@commit:path), and an absolute `path` always. A
   missing file is an error, never a silent download, so a run with SCANS_DATA_DIR set uses exactly those files.
2. Otherwise the network: the raw file of the original repository pinned at a commit (downloaded once into
   `$XDG_CACHE_HOME/scans/data`, default `~/.cache/scans/data`), or a Hugging Face hub dataset pinned at a revision
   (read by scans.data.parse through `datasets.load_dataset`).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
from pathlib import Path

from scans.data.spec import DatasetSpec
from scans.errors import DataError

ENV_DATA_DIR = "SCANS_DATA_DIR"
# Either variable switches the Hugging Face libraries offline; the URL downloads here honour them too.
OFFLINE_ENV_VARS = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
DOWNLOAD_TIMEOUT_S = 60
_MAX_REASON_CHARS = 200


def data_dir() -> Path | None:
    """The local data folder from SCANS_DATA_DIR (relative to the working directory), or None when unset."""
    value = os.environ.get(ENV_DATA_DIR, "").strip()
    if not value:
        return None
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path.cwd() / path


def reads_locally(spec: DatasetSpec) -> bool:
    """Whether the entry is read from local files now: SCANS_DATA_DIR is set, or it has no remote source, or every
    path is absolute."""
    return data_dir() is not None or not spec.remote or all(Path(p).expanduser().is_absolute() for p in spec.local)


def _is_pattern(relative: str) -> bool:
    return any(ch in relative for ch in "*?[")


def _source_for(spec: DatasetSpec, index: int) -> str:
    """The remote source of local entry `index` (its own URL when the files map one-to-one)."""
    if spec.urls and len(spec.urls) == len(spec.local) and not _is_pattern(spec.local[index]):
        return spec.urls[index]
    return spec.remote


def local_paths(spec: DatasetSpec) -> list[Path]:
    """Each `path` of the entry as a full path (patterns unexpanded); DataError when a relative one has no folder."""
    root = data_dir()
    out = []
    for relative in spec.local:
        path = Path(relative).expanduser()
        if not path.is_absolute():
            if root is None:
                raise DataError(
                    f"dataset {spec.name!r}: path {relative!r} is relative to {ENV_DATA_DIR}, which is unset; set "
                    f"{ENV_DATA_DIR} to the folder that holds it, or give an absolute path ({spec.origin})"
                )
            path = root / path
        out.append(path)
    return out


def local_files(spec: DatasetSpec) -> list[Path]:
    """Every local file of `spec`, patterns expanded in sorted order; DataError naming the first one missing."""
    root = data_dir()
    files: list[Path] = []
    for index, path in enumerate(local_paths(spec)):
        relative = Path(spec.local[index]).expanduser()
        where = ""
        if not relative.is_absolute():
            missing = "" if root.is_dir() else f"; the folder {root} does not exist"
            where = f" ({ENV_DATA_DIR}={root}{missing})"
        source = _source_for(spec, index)
        if source:
            advice = f"download it from {source}, or unset {ENV_DATA_DIR} to fetch it over the network"
        else:
            advice = f"put the file there, or fix `path` in {spec.origin}"
        if _is_pattern(str(relative)):
            matches = sorted(p for p in path.parent.glob(path.name) if p.is_file())
            if not matches:
                raise DataError(f"dataset {spec.name!r}: no file matches {path}{where}; {advice}")
            files.extend(matches)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"dataset {spec.name!r}: file not found: {path}{where}; {advice}")
    return files


def short(error: BaseException) -> str:
    """An exception as one short line (library messages often span several)."""
    text = " ".join(str(error).split()) or type(error).__name__
    text = f"{type(error).__name__}: {text}"
    return text if len(text) <= _MAX_REASON_CHARS else text[: _MAX_REASON_CHARS - 3] + "..."


def offline() -> bool:
    return any(os.environ.get(var, "").strip().upper() in {"1", "ON", "YES", "TRUE"} for var in OFFLINE_ENV_VARS)


def fetch_error(spec: DatasetSpec, reason: str) -> DataError:
    places = ", ".join(f"${ENV_DATA_DIR}/{relative}" for relative in spec.local)
    return DataError(
        f"dataset {spec.name!r} could not be fetched from {spec.remote} ({reason}); "
        f"place the file(s) at {places} instead (a folder laid out like shared/data) and set {ENV_DATA_DIR}"
    )


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".cache") / "scans" / "data"


def download(spec: DatasetSpec, url: str) -> Path:
    """The cached copy of `url`, downloaded atomically on first use (the URL pins a commit, so it never changes)."""
    target = _cache_dir() / hashlib.sha256(url.encode()).hexdigest()[:16] / url.rsplit("/", 1)[-1]
    if target.is_file():
        return target
    if offline():
        raise fetch_error(spec, f"offline: {' or '.join(OFFLINE_ENV_VARS)} is set")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:
            payload = response.read()
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
            tmp.write(payload)
        os.replace(tmp.name, target)
    except (OSError, ValueError) as error:  # URLError, HTTPError and timeouts are OSErrors
        raise fetch_error(spec, short(error)) from error
    return target
