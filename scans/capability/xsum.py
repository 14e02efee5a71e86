"""XSum summarisation (reference §5.4): the authors' prompt, greedy decoding, ROUGE-1/2/L F1.

The authors scored with the `rouge` package; this project uses Google's `rouge-score` with Porter stemming, the
maintained implementation (docs/differences.md). Scores are F-measures ×100, averaged over the documents.
"""

from __future__ import annotations

import random
from collections.abc import Sequence

import pandas as pd

PROMPT = "Document:{document}\nBased on the previous text, provide a brief single summary:"
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def sample_documents(table: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    """`n` documents drawn with `seed` (None: all), in a stable order."""
    if n is None or n >= len(table):
        return table.reset_index(drop=True)
    rows = sorted(random.Random(seed).sample(range(len(table)), n))
    return table.iloc[rows].reset_index(drop=True)


def prompt(document: str) -> str:
    return PROMPT.format(document=document)


def rouge_per_document(predictions: Sequence[str], references: Sequence[str]) -> dict[str, list[float]]:
    """ROUGE-1/2/L F1 (×100, stemmed) of each document."""
    from rouge_score import rouge_scorer

    if len(predictions) != len(references) or not predictions:
        raise ValueError(f"{len(predictions)} predictions for {len(references)} references")
    scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=True)
    scores = [scorer.score(ref, pred) for pred, ref in zip(predictions, references)]
    return {t: [100.0 * s[t].fmeasure for s in scores] for t in ROUGE_TYPES}


def rouge(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
    """Mean ROUGE-1/2/L F1 (×100) with stemming."""
    return {t: sum(v) / len(v) for t, v in rouge_per_document(predictions, references).items()}
