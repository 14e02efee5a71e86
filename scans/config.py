"""The config's leaf parsers (layer ranges, numbers, sizes) and names, each failing with a one-line ConfigError.

Whole-project validation, which builds every method and reads the data catalogue, is `scans.validation`, above the
library; these parsers sit below it, so every layer may use them."""

from __future__ import annotations

import numbers
import re
from pathlib import Path

from omegaconf import ListConfig

from scans.errors import ConfigError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"  # the Hydra config groups
STAGES = (
    "align", "extract", "anchor", "classify", "tune", "prepare", "analyze", "steer", "judge", "capability", "cost",
    "report", "judge_agreement", "sweep", "sweeps", "export", "jailbreak", "all",
)  # fmt: skip
ANCHOR_LAYERS = "anchor"  # steer.layers=anchor: the layers the `anchor` stage's refusal score suggests
SEGMENTS = ("former", "middle", "latter")  # steer.layers=middle: a segment of `analysis.segments` (Table 5)
SWEEP_VARIES = ("alpha", "threshold", "layers")
_RANGE = re.compile(r"^\s*(-?\d+)\s*(?:-|\.\.)\s*(-?\d+)\s*$")


def parse_layers(spec, num_layers: int | None, key: str) -> list[int]:
    """Layers from "a-b" (inclusive), an int, or a list of ints / "a-b" items; checked against the model's depth."""
    items = list(spec) if isinstance(spec, (list, tuple, ListConfig)) else [spec]
    layers: list[int] = []
    for item in items:
        if isinstance(item, bool):
            raise ConfigError(f"{key}={spec!r} is not a layer range")
        if isinstance(item, int):
            layers.append(item)
            continue
        text = str(item).strip()
        match = _RANGE.match(text)
        if match:
            lo, hi = int(match.group(1)), int(match.group(2))
            if lo > hi:
                raise ConfigError(f"{key}={spec!r}: range start {lo} is after its end {hi}")
            layers.extend(range(lo, hi + 1))
        elif text.lstrip("-").isdigit():
            layers.append(int(text))
        else:
            raise ConfigError(f"{key}={spec!r} is not a layer range; use 'a-b' (inclusive) or a list of indices")
    if not layers:
        raise ConfigError(f"{key} is empty")
    if num_layers is not None:
        bad = [layer for layer in layers if not 0 <= layer < num_layers]
        if bad:
            raise ConfigError(
                f"{key}={spec!r}: layer {bad[0]} is out of range for a model with {num_layers} layers "
                f"(valid: 0-{num_layers - 1})"
            )
    return sorted(set(layers))


def number(value, key: str, lo: float | None = None, hi: float | None = None) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ConfigError(f"{key}={value!r} is not a number")
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise ConfigError(f"{key}={value!r} is outside [{lo}, {hi}]")
    return float(value)


def positive_int(value, key: str, allow_none: bool = False) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{key}={value!r} must be a positive integer" + (" or null" if allow_none else ""))
    return value
