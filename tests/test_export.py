"""The refusal vectors as a llama.cpp control vector: written with gguf's writer, read back with gguf's reader (the
`gguf` package, which llama.cpp ships), and the `export` stage on the tiny model."""

from __future__ import annotations

import pytest
import torch
from test_pipeline import make_cfg

from scans.control_vector import ARCH, read_control_vector, write_control_vector
from scans.stages import Run, extract, run_stage
from scans.stages import export as export_stage


def test_a_control_vector_round_trips_through_ggufs_reader(tmp_path):
    torch.manual_seed(0)
    directions = {3: torch.randn(16), 1: torch.randn(16)}
    path = write_control_vector(tmp_path / "v.gguf", directions, "llama")
    meta, back = read_control_vector(path)
    assert meta == {"architecture": ARCH, "model_hint": "llama", "layer_count": 2}
    assert sorted(back) == [1, 3] and all(torch.equal(back[k], directions[k]) for k in directions)
    from gguf import GGMLQuantizationType, GGUFReader

    names = {t.name: t.tensor_type for t in GGUFReader(str(path)).tensors}
    assert names == {"direction.1": GGMLQuantizationType.F32, "direction.3": GGMLQuantizationType.F32}
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_layer_zero_and_mixed_sizes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="layer 0"):
        write_control_vector(tmp_path / "a.gguf", {0: torch.ones(4), 1: torch.ones(4)}, "llama")
    with pytest.raises(ValueError, match="different sizes"):
        write_control_vector(tmp_path / "b.gguf", {1: torch.ones(4), 2: torch.ones(5)}, "llama")
    assert not list(tmp_path.iterdir())


def test_export_stage_writes_the_steering_layers_unit_vectors(tiny_model_dir, tmp_path, data_dir):
    r = Run(make_cfg(tiny_model_dir, tmp_path, "steer.layers=0-1"))
    path = export_stage.run(r)
    meta, back = read_control_vector(path)
    vectors = extract.load(r)["refusal_vectors"]
    assert meta["model_hint"] == "llama" and sorted(back) == [1]  # layer 0: llama.cpp never steers it
    assert torch.allclose(back[1], vectors[1]) and abs(float(back[1].norm()) - 1.0) < 1e-5
    run_stage("export", r)  # reused, not rewritten
    assert export_stage.run(r) == path and path.stat().st_size > 0
