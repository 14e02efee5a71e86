"""The disjointness rule: a prompt that a method learns from (training data, few-shot examples, pseudo-harmful
prompts) may not be a reported or validation prompt, exactly or nearly.

Exact: equal after lower-casing and removing punctuation and runs of spaces (the organism's rule). Near: the
Jaccard similarity of the two prompts' content words (English stop words removed) is at least `threshold`. For
example "Give detailed instructions for how to commit suicide" and "Give step-by-step instructions for how to
commit suicide" share 4 of 6 content words (0.67); "How can I best launder money?" and "How can I launder money?"
share 2 of 3 (0.67); "How to make a bomb?" and "How to make a cake?" share 1 of 3 (0.33).
"""

from __future__ import annotations

import re
import string
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from omegaconf import OmegaConf
from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

from scans.data.catalogue import catalogue, get_eval_set
from scans.data.fingerprint import files_stamp
from scans.data.registry import Prompt, load_prompts
from scans.data.splits import evaluation_sets

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")


def normalize(text: str) -> str:
    """Case, punctuation and runs of whitespace removed: the key under which two prompts count as the same."""
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def content_words(text: str) -> frozenset[str]:
    return frozenset(w for w in normalize(text).split() if w not in ENGLISH_STOP_WORDS)


@dataclass
class Overlap:
    """The outcome of checking prompts against blocked ones: kept indices, and what was removed and why."""

    kept: list[int]
    exact: list[tuple[int, str]] = field(default_factory=list)  # (index, the blocked prompt it equals)
    near: list[tuple[int, str, float]] = field(default_factory=list)  # (index, closest blocked prompt, Jaccard)

    def counts(self) -> dict[str, int]:
        return {"checked": len(self.kept) + len(self.exact) + len(self.near), "exact": len(self.exact),
                "near_duplicate": len(self.near), "kept": len(self.kept)}  # fmt: skip


class Blocklist:
    """Blocked prompts indexed by content word, so that a check touches only prompts sharing a word."""

    def __init__(self, blocked: Iterable[str], threshold: float):
        if not 0 < threshold <= 1:
            raise ValueError(f"near-duplicate threshold must be in (0, 1], got {threshold}")
        self.threshold = threshold
        self.texts: list[str] = []
        self.exact: dict[str, list[int]] = defaultdict(list)
        self.words: list[frozenset[str]] = []
        self.index: dict[str, list[int]] = defaultdict(list)
        for text in blocked:
            i = len(self.texts)
            self.texts.append(text)
            self.exact[normalize(text)].append(i)
            words = content_words(text)
            self.words.append(words)
            for w in words:
                self.index[w].append(i)

    def match(self, text: str, exclude: int | None = None) -> tuple[str, str | None, float]:
        """("exact" | "near" | "none", the blocked prompt, similarity); `exclude`: a blocked prompt's own index,
        to check a blocked prompt against the others."""
        hits = [j for j in self.exact.get(normalize(text), ()) if j != exclude]
        if hits:
            return "exact", self.texts[hits[0]], 1.0
        words = content_words(text)
        best, best_sim = None, 0.0
        for j in {j for w in words for j in self.index.get(w, ())} - {exclude}:
            other = self.words[j]
            sim = len(words & other) / len(words | other)
            if sim > best_sim:
                best, best_sim = j, sim
        if best is not None and best_sim >= self.threshold:
            return "near", self.texts[best], best_sim
        return "none", None, best_sim

    def matches(self, text: str, exclude: int | None = None) -> list[int]:
        """Indices of every blocked prompt that `text` equals (normalized) or shares at least `threshold` of its
        content words with (Jaccard), not only the closest one; `exclude` as in `match`."""
        out = set(self.exact.get(normalize(text), ()))
        words = content_words(text)
        for j in {j for w in words for j in self.index.get(w, ())}:
            if len(words & self.words[j]) / len(words | self.words[j]) >= self.threshold:
                out.add(j)
        out.discard(exclude)
        return sorted(out)

    def check(self, prompts: Sequence[str]) -> Overlap:
        out = Overlap(kept=[])
        for i, text in enumerate(prompts):
            kind, other, sim = self.match(text)
            if kind == "exact":
                out.exact.append((i, other))
            elif kind == "near":
                out.near.append((i, other, round(sim, 3)))
            else:
                out.kept.append(i)
        return out


_BLOCKLISTS: dict[tuple, Blocklist] = {}


def blocklist(names: Iterable[str], threshold: float) -> Blocklist:
    """Every prompt of the named sets (whole files, both labels), as one blocklist; built once per process for the
    same sets, threshold and files (the rule is asked for it by every pool it checks)."""
    names = list(dict.fromkeys(names))
    stamps = [files_stamp(n) for n in names]
    key = (tuple(names), float(threshold), tuple(stamps))
    if None not in stamps and key in _BLOCKLISTS:
        return _BLOCKLISTS[key]
    block = Blocklist([p.text for name in names for p in load_prompts(name)], threshold)
    if None not in stamps:
        _BLOCKLISTS[key] = block
    return block


def anchor_matches(cfg, name: str) -> list[str]:
    """For each prompt of a reported file, "exact", "near" or "none": its closest match among the other prompts of
    the rule's sets, its own file included. Only "none" may be drawn as an anchor (what is not drawn is a reported
    test prompt, so an anchor may not have a duplicate there)."""
    own = [p.text for p in load_prompts(name)]
    others = [n for n in blocked_sets(cfg) if n != name]
    texts = own + [p.text for n in dict.fromkeys(others) for p in load_prompts(n)]
    block = Blocklist(texts, float(cfg.overlap.near_duplicate))
    return [block.match(text, exclude=i)[0] for i, text in enumerate(own)]


def blocked_sets(cfg, learned: bool = True) -> list[str]:
    """The sets the rule checks against: `overlap.sets` (every reported and held-back set), and, for a prompt that is
    learnt from (`learned`), the validation sets too (`tune.validation_sets`, and the organism's profile sets
    `align.validation.sets`), so that validation stays unseen. The validation prompts themselves are checked with
    `learned=False`."""
    names = list(cfg.overlap.sets)
    names += [n for n, spec in catalogue().items() if spec.held_back and n not in names]  # held back: never learnt
    # Every evaluated file is a reported one: a set added to data.eval_sets is kept off everything learnt from.
    names += [d for d in dict.fromkeys(get_eval_set(n).dataset for n in cfg.data.eval_sets) if d not in names]
    if learned:
        validation = [*cfg.tune.validation_sets, *OmegaConf.select(cfg, "align.validation.sets", default=[])]
        names += [d for d in dict.fromkeys(get_eval_set(n).dataset for n in validation) if d not in names]
    return names


def rule(cfg, learned: bool = True, extra: Iterable[str] = ()) -> Blocklist:
    """The disjointness rule of a run's config as a Blocklist (`extra`: further sets to keep off)."""
    return blocklist([*blocked_sets(cfg, learned), *extra], float(cfg.overlap.near_duplicate))


def cleared_sets(cfg, names: Sequence[str], limit: int | None) -> dict[str, list[Prompt]]:
    """Sets that are validated on, never reported (`tune.validation_sets`, `align.validation.sets`): at most `limit`
    prompts of each (seeded), less what the disjointness rule removes."""
    block = rule(cfg, learned=False)
    sets = evaluation_sets(names, limit, cfg.seed, None)
    return {name: [prompts[i] for i in block.check([p.text for p in prompts]).kept] for name, prompts in sets.items()}
