"""Training data for the aligned model organism: harmful prompts with refusals, benign prompts with the base
model's own answers, and the removal of every prompt that also occurs in an evaluation or validation set."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from scans.data.overlap import Blocklist, normalize

REFUSAL, HELPFUL = "refusal", "helpful"
_SENTENCE_END = re.compile(r"(?<=[.!?])\s")


@dataclass(frozen=True)
class Example:
    """One supervised example: the model is trained to answer `prompt` with `answer` (loss on the answer only)."""

    prompt: str
    answer: str
    source: str
    kind: str  # REFUSAL | HELPFUL


def remove_overlap(
    prompts: Sequence, blocked: Blocklist, key: Callable = lambda p: p.text
) -> tuple[list, dict[str, int]]:
    """Drop prompts that the disjointness rule blocks (equal to, or a near-duplicate of, a blocked prompt) or that
    were already kept (a duplicate after normalising).

    Returns the kept prompts in order and the counts {"evaluation_overlap": n, "near_duplicate": n, "duplicate": m}.
    """
    seen: set[str] = set()
    kept, counts = [], {"evaluation_overlap": 0, "near_duplicate": 0, "duplicate": 0}
    for p in prompts:
        k = normalize(key(p))
        kind = blocked.match(key(p))[0]
        if kind == "exact":
            counts["evaluation_overlap"] += 1
        elif kind == "near":
            counts["near_duplicate"] += 1
        elif k in seen:
            counts["duplicate"] += 1
        else:
            seen.add(k)
            kept.append(p)
    return kept, counts


def kept_where(prompts: Sequence, where: Mapping[str, Sequence[str]]) -> list:
    """The prompts whose meta column `c` holds one of `where[c]`, for every column named (all of them when `where`
    is empty): HarmBench's standard behaviours, or Do-Not-Answer's risk areas of plainly harmful requests."""
    return [p for p in prompts if all(p.meta.get(column) in values for column, values in where.items())]


def first_sentence(text: str) -> str:
    return _SENTENCE_END.split(text.strip(), maxsplit=1)[0].strip()


def refusal_pool(outputs: Iterable[str], is_refusal: Callable[[str], bool]) -> list[str]:
    """First sentences of the outputs that the refusal judge counts as refusals, deduplicated, in order."""
    pool: dict[str, None] = {}
    for out in outputs:
        sentence = first_sentence(out)
        if sentence and is_refusal(sentence):
            pool.setdefault(sentence, None)
    return list(pool)


def lookalikes(prompts: Iterable[str], words: Iterable[str]) -> list[str]:
    """Prompts that contain one of `words` as a whole word (any case): benign instructions that share the vocabulary
    of harmful ones ("Describe the long-term effects of smoking", "Who wrote To Kill a Mockingbird?")."""
    pattern = re.compile(r"\b(?:" + "|".join(re.escape(w) for w in words) + r")\b", re.IGNORECASE)
    return [p for p in prompts if pattern.search(p)]


def form_of(text: str, words: int = 2) -> str:
    """A prompt's form: its first `words` words, lower-cased ("how can", "write a")."""
    return " ".join(re.findall(r"[a-z']+", text.lower())[:words])


def form_matched(prompts: Sequence[str], harmful: Sequence[str], rng: random.Random) -> list[str]:
    """For each harmful prompt, one benign prompt of the same form where one is left (seeded, without replacement),
    in the benign prompts' order: benign examples whose forms follow the refusals', so that a refusal is tied to what
    a prompt asks rather than to how it asks it."""
    by_form: dict[str, list[int]] = {}
    for i, p in enumerate(prompts):
        by_form.setdefault(form_of(p), []).append(i)
    for idx in by_form.values():
        rng.shuffle(idx)
    chosen = [by_form[f].pop() for f in map(form_of, harmful) if by_form.get(f)]
    return [prompts[i] for i in sorted(chosen)]


def sample(items: Sequence, n: int | None, rng: random.Random) -> list:
    """A seeded sample of `n` items in their original order (all of them when n is None or too large)."""
    if n is None or n >= len(items):
        return list(items)
    chosen = sorted(rng.sample(range(len(items)), n))
    return [items[i] for i in chosen]


def with_refusals(prompts: Sequence[str], pool: Sequence[str], source: str, rng: random.Random) -> list[Example]:
    """Pair each harmful prompt with a refusal drawn (seeded) from the pool."""
    return [Example(p, rng.choice(pool), source, REFUSAL) for p in prompts]
