"""Choosing σ(q)'s classification layers 𝓛 and threshold 𝒯 on a validation split, from cached similarities."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from scans.data.labels import BENIGN, HARMFUL
from scans.steering.vectors import harm_similarity


def layer_auroc(layer_sims: torch.Tensor, harmful: Sequence[bool]) -> np.ndarray:
    """AUROC of each layer's cosine as a harmfulness score (harmful = positive class), (N, L) -> (L,)."""
    y = np.asarray(harmful, dtype=int)
    return np.array([roc_auc_score(y, layer_sims[:, layer].numpy()) for layer in range(layer_sims.shape[1])])


def best_window(layer_sims: torch.Tensor, harmful: Sequence[bool], sizes: Sequence[int]) -> tuple[list[int], float]:
    """The contiguous block of layers whose mean cosine (Eq. 4) separates harmful from benign best (AUROC).

    Ties go to the earlier, then the shorter window, so the choice is deterministic.
    """
    y = np.asarray(harmful, dtype=int)
    best: tuple[float, list[int]] = (-1.0, [])
    n = layer_sims.shape[1]
    for size in sorted(set(s for s in sizes if 1 <= s <= n)):
        for start in range(n - size + 1):
            layers = list(range(start, start + size))
            auc = roc_auc_score(y, harm_similarity(layer_sims, layers).numpy())
            if auc > best[0] + 1e-12:
                best = (auc, layers)
    return best[1], float(best[0])


def best_threshold(scores: torch.Tensor, harmful: Sequence[bool]) -> tuple[float, float]:
    """𝒯 maximising balanced accuracy of Eq. 5 (s ≥ 𝒯 → harmful); candidates are midpoints between scores."""
    s = np.sort(np.unique(scores.numpy()))
    candidates = np.concatenate([[s[0] - 1e-6], (s[:-1] + s[1:]) / 2, [s[-1] + 1e-6]])
    y = np.asarray(harmful, dtype=bool)
    x = scores.numpy()
    best = (-1.0, 0.0)
    for t in candidates:
        pred = x >= t
        bacc = 0.5 * (pred[y].mean() + (~pred[~y]).mean())
        if bacc > best[0] + 1e-12:
            best = (float(bacc), float(t))
    return best[1], best[0]


def select_setting(grid: Sequence[dict], default_harmful: float, max_harmful_drop: float | None) -> tuple[dict, bool]:
    """The α x steering-layer setting to keep, from judged validation behaviour (rates in [0, 1]).

    With `max_harmful_drop` None: the best balanced accuracy. Otherwise the lowest benign refusal among the settings
    whose harmful refusal stays within `max_harmful_drop` of the unsteered model's; if none does, the best balanced
    accuracy, and the second value says that the cap could not be met. Ties go to the smaller α (sum of both
    magnitudes for two).
    """
    by_bacc = max(grid, key=lambda g: (round(g["balanced_accuracy"], 9), -_size(g)))
    if max_harmful_drop is None:
        return by_bacc, True
    allowed = [g for g in grid if g["harmful"] >= default_harmful - max_harmful_drop - 1e-9]
    if not allowed:
        return by_bacc, False
    return min(allowed, key=lambda g: (round(g["benign"], 9), _size(g))), True


def _size(setting: dict) -> float:
    """How much a setting steers: α, or α_benign + α_harmful for two magnitudes."""
    return setting["alpha"] + setting.get("alpha_harmful", 0.0)


def behaviour(flags: dict[str, np.ndarray]) -> dict:
    """Refusal rates per label (harmful, benign), and their balanced accuracy (harmful refusal, benign compliance)."""
    rates = {lab: float(np.mean(f)) for lab, f in flags.items()}
    rates["balanced_accuracy"] = 0.5 * (rates[HARMFUL] + 1.0 - rates[BENIGN])
    return rates


@dataclass(frozen=True)
class TunedSteering:
    """α and the steering layers chosen on validation; `alpha_harmful` for the two-magnitude row (None: α both ways)."""

    alpha: float
    steer_layers: tuple[int, ...]
    alpha_harmful: float | None = None


@dataclass(frozen=True)
class TunedClassifier:
    """The harm classifier chosen for the `SCANS + classifier` row, with its 𝓛, 𝒯 and steering."""

    kind: str
    anchors: str
    layers: tuple[int, ...]
    threshold: float
    steering: TunedSteering


@dataclass(frozen=True)
class TunedChoice:
    """What the `tune` stage chose on the validation split: σ(q)'s 𝓛 and 𝒯, the symmetric steering, the
    two-magnitude steering and the classifier row's. `record` is the whole choice as written (grids included), for
    the report."""

    classify_layers: tuple[int, ...]
    threshold: float
    steering: TunedSteering
    two_magnitudes: TunedSteering
    classifier: TunedClassifier
    record: dict = field(compare=False, repr=False)

    @classmethod
    def from_record(cls, c: dict) -> TunedChoice:
        two, k = c["two_magnitudes"], c["classifier"]
        return cls(
            classify_layers=tuple(c["classify_layers"]),
            threshold=float(c["threshold"]),
            steering=TunedSteering(float(c["alpha"]), tuple(c["steer_layers"])),
            two_magnitudes=TunedSteering(float(two["alpha"]), tuple(two["steer_layers"]), float(two["alpha_harmful"])),
            classifier=TunedClassifier(
                k["kind"],
                k["anchors"],
                tuple(k["layers"]),
                float(k["threshold"]),
                TunedSteering(float(k["alpha"]), tuple(k["steer_layers"])),
            ),  # fmt: skip
            record=c,
        )
