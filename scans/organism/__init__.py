"""The aligned model organism: safety-tune a helpful model until it over-refuses (library part, no file I/O)."""

from scans.organism.data import (
    HELPFUL,
    REFUSAL,
    Example,
    first_sentence,
    form_matched,
    form_of,
    kept_where,
    lookalikes,
    normalize,
    refusal_pool,
    remove_overlap,
    sample,
    with_refusals,
)
from scans.organism.train import (
    IGNORE,
    TrainConfig,
    answer_loss,
    collate,
    native_autocast,
    tokenize_example,
    train,
)

__all__ = [
    "HELPFUL",
    "IGNORE",
    "REFUSAL",
    "Example",
    "TrainConfig",
    "answer_loss",
    "collate",
    "first_sentence",
    "form_matched",
    "form_of",
    "kept_where",
    "lookalikes",
    "native_autocast",
    "normalize",
    "refusal_pool",
    "remove_overlap",
    "sample",
    "tokenize_example",
    "train",
    "with_refusals",
]
