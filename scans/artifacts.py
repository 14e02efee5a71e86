"""Where artifacts are written, how they are keyed, and how they are written (atomically) and read.

Layout: `<root>/<model name>/<stage>/<key>/`, where key is a short hash of every input that matters to that stage
(upstream keys included), so a changed hyperparameter gives a new folder and an unchanged one is reused. A folder
is complete iff its `provenance.json` exists: it is written last, inside a temporary folder that is renamed into
place, so an interrupted run leaves nothing that looks finished. A process killed mid-write leaves only a hidden
`.<key>.<host>-<pid>-*.tmp` folder beside the target, which the next write of that target removes once its owner is
gone. A folder that is complete but whose files are damaged (a disk filled up, a file edited by hand) fails on
reading with one line that names the file and the command that rebuilds it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shlex
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import torch

from scans.errors import ArtifactError
from scans.version import __version__

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


def _owner_tag() -> str:
    """`<host hash>-<pid>`: the writer of a temporary folder, so a later run can tell whether it is still alive."""
    return f"{stable_hash(socket.gethostname(), 8)}-{os.getpid()}"


def _owner_alive(host: str, pid: int) -> bool:
    if host != stable_hash(socket.gethostname(), 8):
        return True  # another machine's writer (a shared filesystem): never ours to judge
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: a live process of another user
        return True
    return True


def remove_stale_tmp(target: Path) -> list[Path]:
    """Remove the temporary folders beside `target` left by writers of it that were killed (on this machine)."""
    target = Path(target)
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.([0-9a-f]{{8}})-(\d+)-[^.]*\.tmp$")
    removed = []
    if not target.parent.is_dir():
        return removed
    for entry in target.parent.iterdir():
        match = pattern.match(entry.name)
        if match and entry.is_dir() and not _owner_alive(match.group(1), int(match.group(2))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


@contextmanager
def atomic_dir(target: Path, keep: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; rename it to `target` only if the block succeeds.

    A previous `target` is first renamed aside (never deleted in place, which a kill could leave half done with its
    provenance still there), and temporary folders of killed writers of the same target are removed. Where
    `keep(target)` is true when the block ends (another writer completed it meanwhile), the target stays as it is."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_tmp(target)
    prefix = f".{target.name}.{_owner_tag()}-"
    tmp = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=target.parent))
    old = None
    try:
        yield tmp
        if keep is not None and keep(target):
            return  # another writer finished the same target first: keep its folder, drop this one
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=prefix, suffix=".tmp", dir=target.parent))
            os.replace(target, old)
        os.replace(tmp, target)
    finally:
        for leftover in (tmp, old):
            if leftover is not None and leftover.exists():
                shutil.rmtree(leftover, ignore_errors=True)


@contextmanager
def atomic_file(path: Path) -> Iterator[str]:
    """Yield a temporary file name beside `path`; the file replaces `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)


def write_json(path: Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


# Where a stage's artifacts live under a different name than the stage that writes them.
_STAGE_OF_FOLDER = {"responses": "steer"}


def artifact_folder(path: Path) -> Path | None:
    """The complete artifact folder (`<root>/<model>/<stage>/<key>/`, with its provenance) that holds `path`."""
    for parent in Path(path).parents:
        if (parent / PROVENANCE).is_file():
            return parent
    return None


def corrupt(path: Path, reason: str) -> ArtifactError:
    """One line naming the damaged file and the command that rebuilds it (the folder must go first: it looks complete
    and would be reused)."""
    path = Path(path)
    reason = (reason.strip().splitlines() or ["unreadable"])[0]
    folder = artifact_folder(path)
    if folder is None:
        return ArtifactError(f"corrupt artifact {path} ({reason}); delete it and rerun the stage that wrote it")
    stage = folder.parent.name
    stage = _STAGE_OF_FOLDER.get(stage, stage)
    command = f"rm -rf {shlex.quote(str(folder))} && python -m scans stage={stage}"
    return ArtifactError(f"corrupt artifact {path} ({reason}); rebuild it with: {command}")


def _json_reason(exc: ValueError, line: int | None = None) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return f"not UTF-8 text at byte {exc.start}"
    if isinstance(exc, json.JSONDecodeError):
        where = f"line {line}" if line is not None else f"line {exc.lineno} column {exc.colno}"
        return f"invalid JSON at {where}: {exc.msg}; truncated?"
    return str(exc)


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError
        raise corrupt(path, _json_reason(exc)) from None
    except FileNotFoundError:
        if artifact_folder(path) is None:
            raise
        raise corrupt(path, "missing from a complete artifact folder") from None


def write_jsonl(path: Path, rows: Iterable[Mapping[str, Any]]) -> None:
    write_text_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise corrupt(path, _json_reason(exc)) from None
    except FileNotFoundError:
        if artifact_folder(path) is None:
            raise
        raise corrupt(path, "missing from a complete artifact folder") from None
    rows = []
    for number, line in enumerate(text.split("\n"), 1):  # not splitlines(): rows may hold a raw U+2028
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            raise corrupt(path, _json_reason(exc, number)) from None
    return rows


def save_tensors(path: Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    with atomic_file(path) as tmp:
        save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, tmp, metadata=dict(metadata or {}))


def load_tensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, ValueError, RuntimeError) as exc:  # a truncated or overwritten file
        raise corrupt(path, f"unreadable safetensors: {str(exc).strip() or type(exc).__name__}") from None
    except FileNotFoundError:
        if artifact_folder(path) is None:
            raise
        raise corrupt(path, "missing from a complete artifact folder") from None


class ArtifactStore:
    """The artifact folders of one root."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, model: str, stage: str, key: str) -> Path:
        return self.root / model / stage / key

    def is_complete(self, model: str, stage: str, key: str) -> bool:
        return (self.path(model, stage, key) / PROVENANCE).is_file()

    def lock(self, model: str, stage: str, key: str):
        """An inter-process lock on one artifact (`<root>/.locks/<model>/<stage>/<key>.lock`, apart from the artifact
        folders): parallel jobs of a multirun that need the same missing artifact build it once, and none sees it
        half written or half replaced."""
        from filelock import FileLock

        path = self.root / ".locks" / model / stage / f"{key}.lock"
        path.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(path))

    def obtain(self, model: str, stage: str, key: str, build: Callable[[Path], Mapping[str, Any] | None]) -> Path:
        """The folder of a complete artifact. A missing one is built by `build(tmp)`, which writes its files into the
        temporary folder and returns the provenance fields to record, under the artifact's lock, with completeness
        checked again inside it: a job that waited for another building the same artifact reads it, never builds it."""
        path = self.path(model, stage, key)
        if self.is_complete(model, stage, key):
            return path
        with self.lock(model, stage, key):
            if not self.is_complete(model, stage, key):
                provenance: dict[str, Any] = {}
                with self._writing(model, stage, key, provenance) as tmp:
                    provenance.update(build(tmp) or {})
        return path

    @contextmanager
    def building(self, model: str, stage: str, keys: Iterable[str]) -> Iterator[list[str]]:
        """Several artifacts built together (one generation for many response sets): the locks of the missing ones,
        taken in a fixed order, and, inside them, the keys still missing; each is then written with `write`."""
        missing = sorted({k for k in keys if not self.is_complete(model, stage, k)})
        with ExitStack() as stack:
            for k in missing:
                stack.enter_context(self.lock(model, stage, k))
            yield [k for k in missing if not self.is_complete(model, stage, k)]

    @contextmanager
    def write(self, model: str, stage: str, key: str, provenance: Mapping[str, Any]) -> Iterator[Path]:
        """Write one artifact whose lock the caller holds (`building`): files into the yielded temporary folder,
        provenance last, then the rename."""
        with self._writing(model, stage, key, provenance) as tmp:
            yield tmp

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
        temporary folder and returns the result, which is written beside them before the folder is renamed. Under
        the artifact's lock: a job that waited for another building the same artifact reads it, never builds it."""

        def write_result(tmp: Path) -> Mapping[str, Any]:
            write_json(tmp / result, build(tmp))
            return provenance or {}

        return read_json(self.obtain(model, stage, key, write_result) / result)

    @contextmanager
    def writing(self, model: str, stage: str, key: str, provenance: Mapping[str, Any]) -> Iterator[Path]:
        """Write a stage's files into a temporary folder; provenance goes in last, then the folder is renamed, under
        the artifact's lock. If another job completed the same artifact meanwhile, its folder is kept (same key,
        same inputs) and this one dropped, so a reader never finds the folder missing or half replaced."""
        with self.lock(model, stage, key), self._writing(model, stage, key, provenance) as tmp:
            yield tmp

    @contextmanager
    def _writing(self, model: str, stage: str, key: str, provenance: Mapping[str, Any]) -> Iterator[Path]:
        with atomic_dir(self.path(model, stage, key), keep=lambda target: (target / PROVENANCE).is_file()) as tmp:
            yield tmp
            write_json(tmp / PROVENANCE, {"stage": stage, "key": key, **provenance, "environment": environment()})
