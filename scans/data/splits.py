"""Anchor / held-out split and the evaluation subsets of Table 2 (reference §4 "Anchor size", §5.1).

SCANS draws `size` harmful anchors from AdvBench and `size` benign anchors from TruthfulQA (64 + 64 in the paper).
The anchors give the refusal vectors (Eq. 1) and the harm direction (Eq. 3); what is left of the two files is the
"AdvBench" and "TQA" test sets (520 − 64 = 456 and 817 − 64 = 753).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

from scans.data.catalogue import get_eval_set
from scans.data.registry import Prompt, load_prompts
from scans.data.spec import BENIGN, HARMFUL
from scans.errors import DataError


@dataclass(frozen=True)
class AnchorSplit:
    """Anchors (in draw order) and held-out prompts (in file order) of one harmful and one benign list."""

    harmful_anchors: tuple[Prompt, ...]
    benign_anchors: tuple[Prompt, ...]
    harmful_heldout: tuple[Prompt, ...]
    benign_heldout: tuple[Prompt, ...]
    harmful_dataset: str = ""  # the dataset each list was drawn from: its evaluation sets are the held-out part
    benign_dataset: str = ""

    def heldout(self, dataset: str, label: str) -> list[Prompt] | None:
        """The held-out prompts when `dataset` is the one the `label` anchors were drawn from, else None."""
        if label == HARMFUL and dataset == self.harmful_dataset:
            return list(self.harmful_heldout)
        if label == BENIGN and dataset == self.benign_dataset:
            return list(self.benign_heldout)
        return None


def _draw(
    prompts: Sequence[Prompt], size: int, rng: random.Random, kind: str, eligible: Sequence[bool] | None
) -> tuple[list[int], list[int]]:
    """(anchor indices in draw order, held-out indices in file order); anchors only among `eligible` prompts."""
    pool = [i for i in range(len(prompts)) if eligible is None or eligible[i]]
    if not 1 <= size <= len(pool):
        raise DataError(
            f"anchor size {size} must be between 1 and {len(pool)}, the number of {kind} prompts eligible as anchors"
        )
    anchors = [pool[i] for i in rng.sample(range(len(pool)), size)]
    chosen = set(anchors)
    return anchors, [i for i in range(len(prompts)) if i not in chosen]


def anchor_split(
    harmful: Sequence[Prompt],
    benign: Sequence[Prompt],
    size: int,
    seed: int,
    eligible: tuple[Sequence[bool], Sequence[bool]] | None = None,
) -> AnchorSplit:
    """Draw `size` anchors from each list with `random.Random(seed)` (harmful first); the rest is held out.
    `eligible` (harmful, benign) restricts the draw: the disjointness rule allows as anchors only prompts with no
    near duplicate among the held-out ones or any other reported prompt (scans.data.overlap.anchor_matches).

    The authors' `prepare_safety_anchor_datasets` is unseeded and draws the benign anchors in two steps (520
    TruthfulQA questions "for balance", then 64 of those), which gives the same distribution as one draw of 64; we
    draw directly, seeded, so a split is reproducible. They form the test sets by set subtraction, whose order
    depends on hash randomisation; the held-out lists here keep the original file order.
    """
    rng = random.Random(seed)
    ok_harmful, ok_benign = eligible if eligible is not None else (None, None)
    harmful_anchors, harmful_rest = _draw(harmful, size, rng, HARMFUL, ok_harmful)
    benign_anchors, benign_rest = _draw(benign, size, rng, BENIGN, ok_benign)
    return AnchorSplit(
        harmful_anchors=tuple(harmful[i] for i in harmful_anchors),
        benign_anchors=tuple(benign[i] for i in benign_anchors),
        harmful_heldout=tuple(harmful[i] for i in harmful_rest),
        benign_heldout=tuple(benign[i] for i in benign_rest),
        harmful_dataset=_source(harmful),
        benign_dataset=_source(benign),
    )


def _source(prompts: Sequence[Prompt]) -> str:
    sources = {p.source for p in prompts}
    return sources.pop() if len(sources) == 1 else ""


def _subsample(prompts: list[Prompt], limit: int | None, seed: int, name: str) -> list[Prompt]:
    """A seeded random subset of `limit` prompts in their original order (all of them when limit is None)."""
    if limit is None or limit >= len(prompts):
        return prompts
    # Seeded per set name, so a set's subset does not depend on which other sets are requested.
    keep = sorted(random.Random(f"{seed}:{name}").sample(range(len(prompts)), limit))
    return [prompts[i] for i in keep]


def evaluation_sets(
    names: Sequence[str], limit: int | None, seed: int, heldout: AnchorSplit | None
) -> dict[str, list[Prompt]]:
    """The named evaluation sets (scans.data.catalogue.eval_sets: each the prompts of one label of one dataset),
    each in file order.

    A set of the dataset the anchors of its label were drawn from (`advbench`, `truthfulqa` in the paper) is the
    held-out part of `heldout`, the run's anchor split (reference §5.1); the other sets are whole files, filtered by
    label (XSTest, RepE). `limit` keeps a seeded random subset of at most that many prompts per set, in file order.
    """
    if limit is not None and limit < 1:
        raise DataError(f"limit={limit}; expected a positive number of prompts per set, or None for all")
    chosen = {name: get_eval_set(name) for name in names}  # DataError naming an unknown set
    loaded: dict[str, list[Prompt]] = {}  # each dataset read once (XSTest and RepE give two sets each)
    sets: dict[str, list[Prompt]] = {}
    for name, spec in chosen.items():
        pool = None if heldout is None else heldout.heldout(spec.dataset, spec.label)
        if pool is None:
            if spec.dataset not in loaded:
                loaded[spec.dataset] = load_prompts(spec.dataset)
            pool = [p for p in loaded[spec.dataset] if p.label == spec.label]
        if not pool:
            raise DataError(f"evaluation set {name!r} is empty (no {spec.label} prompts from {spec.dataset!r})")
        sets[name] = _subsample(pool, limit, seed, name)
    return sets
