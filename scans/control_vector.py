"""Refusal vectors as a llama.cpp control vector: a GGUF file of architecture `controlvector` with one F32 tensor
`direction.<layer>` per steered layer and the metadata `controlvector.model_hint` and `controlvector.layer_count`
(the layout repeng's `export_gguf` writes and llama.cpp's `--control-vector` reads).

llama.cpp adds `direction.<il>` (times the scale of `--control-vector-scaled`) to the output of decoder block `il`
(0-based), the site the refusal vectors are read at here (`hidden_states[l + 1]`); it never steers block 0, so a
direction for layer 0 cannot be written. It steers every position of every query, unconditionally: σ(q) cannot run
inside llama.cpp, so an exported vector is ActAdd with SCANS's vectors, not SCANS.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from scans.artifacts import atomic_file

ARCH = "controlvector"


def write_control_vector(path: Path, directions: Mapping[int, torch.Tensor], model_hint: str) -> Path:
    """Write {layer: (D,) direction} to `path` (atomically); layers are the 0-based decoder blocks they steer."""
    from gguf import GGUFWriter

    if not directions:
        raise ValueError("no direction to write")
    if min(directions) < 1:
        raise ValueError("llama.cpp never steers decoder layer 0: leave it out of the exported layers")
    sizes = {int(v.numel()) for v in directions.values()}
    if len(sizes) != 1:
        raise ValueError(f"directions of different sizes: {sorted(sizes)}")
    with atomic_file(path) as tmp:
        writer = GGUFWriter(tmp, ARCH)
        writer.add_string(f"{ARCH}.model_hint", model_hint)
        writer.add_uint32(f"{ARCH}.layer_count", len(directions))
        for layer in sorted(directions):
            writer.add_tensor(f"direction.{layer}", directions[layer].detach().float().cpu().numpy().astype("<f4"))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return Path(path)


def read_control_vector(path: Path) -> tuple[dict[str, object], dict[int, torch.Tensor]]:
    """({architecture, model_hint, layer_count}, {layer: direction}) of a control-vector GGUF, through gguf's reader."""
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    meta = {
        "architecture": reader.fields["general.architecture"].contents(),
        "model_hint": reader.fields[f"{ARCH}.model_hint"].contents(),
        "layer_count": int(reader.fields[f"{ARCH}.layer_count"].contents()),
    }
    directions = {}
    for tensor in reader.tensors:
        name, _, layer = tensor.name.partition(".")
        if name != "direction" or not layer.isdigit():
            raise ValueError(f"{path}: unexpected tensor {tensor.name!r} in a control vector")
        directions[int(layer)] = torch.from_numpy(np.array(tensor.data, dtype=np.float32).reshape(-1))
    return meta, directions
