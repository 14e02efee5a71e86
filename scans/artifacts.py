"""Where artifacts are written, how they are keyed, and how they are written (atomically) and read.

Layout: `<root>/<model name>/<stage>/<key>/`, where key is a short hash of every input that matters to that stage
(upstream keys included), so a changed hyperparameter gives a new folder and an unchanged one is reused. A folder
is complete iff its `provenance.json` exists: it is written last, inside a temporary folder that is renamed into
place, so an interrupted run leaves nothing that looks finished.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from scans import __version__
from scans.errors import ArtifactError

PROVENANCE = "provenance.json"


def stable_hash(obj: Any, length: int = 12) -> str:
    """Hash of a JSON-able object, independent of dict order."""
    text = json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def git_commit() -> str | None:
    try:
        here = Path(__file__).resolve().parent
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5, check=True
        )
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=here, capture_output=True, text=True, timeout=5)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def environment() -> dict[str, Any]:
    import transformers

    return {
        "scans": __version__,
        "git_commit": git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


@contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; rename it to `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_text_atomic(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    with open(path, encoding="utf-8") as fh:
        return [json.loads(line) for line in fh if line.strip()]


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=dict(metadata or {}))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(path))


class ArtifactStore:
    """The artifact folders of one root."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, model: str, stage: str, key: str) -> Path:
        return self.root / model / stage / key

    def is_complete(self, model: str, stage: str, key: str) -> bool:
        return (self.path(model, stage, key) / PROVENANCE).is_file()

    def require(self, model: str, stage: str, key: str, hint: str) -> Path:
        path = self.path(model, stage, key)
        if not (path / PROVENANCE).is_file():
            raise ArtifactError(f"no {stage} artifact at {path}; run `{hint}` first")
        return path

    def cached(
        self,
        model: str,
        stage: str,
        key: str,
        build: Callable[[Path], Any],
        provenance: Mapping[str, Any] | None = None,
        result: str = "summary.json",
    ) -> Any:
        """The JSON `result` of a complete artifact; otherwise `build(tmp)` writes any further files into the
        temporary folder and returns the result, which is written beside them before the folder is renamed."""
        path = self.path(model, stage, key)
        if self.is_complete(model, stage, key):
            return read_json(path / result)
        with self.writing(model, stage, key, provenance or {}) as tmp:
            out = build(tmp)
            write_json(tmp / result, out)
        return out

    @contextmanager
    def writing(self, model: str, stage: str, key: str, provenance: Mapping[str, Any]) -> Iterator[Path]:
        """Write a stage's files into a temporary folder; provenance goes in last, then the folder is renamed."""
        with atomic_dir(self.path(model, stage, key)) as tmp:
            yield tmp
            write_json(tmp / PROVENANCE, {"stage": stage, "key": key, **provenance, "environment": environment()})
