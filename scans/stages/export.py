"""Stage `export`: the refusal vectors of the steering layers as a llama.cpp control vector (GGUF).

`artifacts/<model>/export/<key>/refusal.gguf` holds one unit direction per layer of `steer.layers` (layer 0 left out:
llama.cpp never steers it). In llama.cpp, `--control-vector-scaled refusal.gguf -3.5` steers every query away from
refusal by α = 3.5, `+3.5` towards it: unconditionally, since σ(q) cannot run there (scans/control_vector.py).
"""

from __future__ import annotations

import logging
from pathlib import Path

from scans.artifacts import stable_hash
from scans.control_vector import write_control_vector
from scans.stages.context import Run
from scans.stages.producers import produces

log = logging.getLogger(__name__)
STAGE = "export"
FILE = "refusal.gguf"


def layers(r: Run) -> list[int]:
    """The steering layers that llama.cpp can steer (every one but block 0)."""
    chosen = [layer for layer in r.steer_layers if layer >= 1]
    if len(chosen) < len(r.steer_layers):
        log.warning("export: layer 0 is left out (llama.cpp never steers decoder block 0)")
    return chosen


def key(r: Run) -> str:
    return stable_hash({"extract": r.extract_key, "layers": layers(r), "normalize": bool(r.cfg.steer.normalize)})


def _load(r: Run, path: Path) -> Path:
    return path / FILE


@produces("control_vector", STAGE, key, _load)
def _build(r: Run, tmp: Path) -> dict:
    vectors = r.artifact("vectors")["refusal_vectors"]
    hint = str(getattr(r.lm.model.config, "model_type", r.model_name))
    chosen = layers(r)
    provenance = {
        "extract_key": r.extract_key,
        "layers": chosen,
        "model_hint": hint,
        "unit": bool(r.cfg.steer.normalize),
    }
    write_control_vector(tmp / FILE, {layer: vectors[layer] for layer in chosen}, hint)
    return provenance


def run(r: Run) -> Path:
    path = r.artifact("control_vector")
    alpha = float(r.cfg.steer.alpha)
    log.info(
        "export: wrote %s (%d layers); in llama.cpp: --control-vector-scaled %s %g (less refusal; +%g for more)",
        path, len(layers(r)), path, -alpha, alpha,
    )  # fmt: skip
    return path
