"""The sha256 of a large file, remembered beside its (size, mtime) so that it is computed once, not at every load.

A memo is a small JSON file: the file's resolved path, size, `mtime_ns`, `ctime_ns` and digest. It is trusted only
while all of them still match the file; otherwise the file is hashed again and the memo rewritten (atomically). The
ctime, which no tool can set, catches a replacement that keeps the size and the mtime (`touch -r`, `rsync -t`, an
installer that restores archive timestamps). A rewrite of the same size within one filesystem timestamp tick of the
hashing is not seen. A memo that cannot be read or written is only a lost shortcut, never an error.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from pathlib import Path

from scans.artifacts import write_json

log = logging.getLogger(__name__)

CHUNK = 1 << 22
SHA256 = re.compile(r"[0-9a-f]{64}")


def hash_file(path: str | Path) -> str:
    """The file's sha256, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def memo_beside(path: str | Path) -> Path:
    """The memo kept next to a file we own (an assembled GGUF): `<file>.sha256.json`."""
    path = Path(path)
    return path.with_name(f"{path.name}.sha256.json")


def _stamp(path: Path, st: os.stat_result) -> dict:
    return {"path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}


def remembered(path: str | Path, memo: str | Path) -> str | None:
    """The digest `memo` holds for `path` if the file is still the one it was computed on, else None."""
    path = Path(path).resolve()
    try:
        known = json.loads(Path(memo).read_text(encoding="utf-8"))
        stamp = _stamp(path, path.stat())
    except (OSError, ValueError):
        return None
    if not isinstance(known, dict) or any(known.get(k) != v for k, v in stamp.items()):
        return None
    sha = known.get("sha256")
    return sha if isinstance(sha, str) and SHA256.fullmatch(sha) else None


def remember(path: str | Path, sha256: str, memo: str | Path, st: os.stat_result | None = None) -> None:
    """Record `sha256` as the digest of `path` as it is now (or as `st` saw it)."""
    path = Path(path).resolve()
    try:
        write_json(Path(memo), {**_stamp(path, st or path.stat()), "sha256": sha256})
    except OSError as exc:  # a read-only cache: the digest is recomputed next time
        log.debug("cannot write the digest memo %s: %s", memo, exc)


# Digests computed in this process, by the file's stamp: artifact keys ask for a model's identity often.
_SEEN: dict[tuple, str] = {}


def sha256_of(path: str | Path, memo: str | Path | None = None) -> str:
    """The sha256 of `path`, from `memo` when it still describes the file, else computed (and remembered there).
    Without a memo, computed once per process and stamp."""
    path = Path(path).resolve()
    if memo is not None and (sha := remembered(path, memo)) is not None:
        return sha
    before = path.stat()
    stamp = tuple(_stamp(path, before).values())
    if memo is None and stamp in _SEEN:
        return _SEEN[stamp]
    sha = hash_file(path)
    if _stamp(path, path.stat()) == _stamp(path, before):  # not changed while being read
        _SEEN[stamp] = sha
        if memo is not None:
            remember(path, sha, memo, before)
    return sha
