"""Named table transforms a dataset entry can ask for (`transform:`, `source.hub.transform:`); why each exists is in
its docstring. A new one is a function here and an entry in TRANSFORMS or HUB_TRANSFORMS."""

from __future__ import annotations

from collections.abc import Callable

import pandas as pd

from scans.data.labels import BENIGN, HARMFUL
from scans.errors import DataError


def _repe_pairs(table: pd.DataFrame) -> pd.DataFrame:
    """RepE-Data rows hold a pair of sentences with a boolean array, True = harmless.

    The label array decides, not the position: every test pair happens to be [True, False] (reference §5.1), but
    the train split mixes both orders, so the authors' fixed order would be wrong there.
    """
    rows = []
    for pair, (sentences, harmless) in enumerate(zip(table["sentence"], table["label"], strict=True)):
        if len(sentences) != len(harmless):
            raise DataError(f"dataset 'repe': pair {pair} has {len(sentences)} sentences but {len(harmless)} labels")
        for position, (text, is_harmless) in enumerate(zip(sentences, harmless, strict=True)):
            rows.append(
                {"text": text, "label": BENIGN if bool(is_harmless) else HARMFUL, "pair": pair, "position": position}
            )
    return pd.DataFrame(rows, columns=["text", "label", "pair", "position"])


def _wikitext_rows(table: pd.DataFrame) -> pd.DataFrame:
    """Lines as the hub's `wikitext-2-raw-v1` rows: a non-blank line keeps its "\\n", a blank line is "".

    So `"\\n\\n".join(rows)` (the GPTQ-style perplexity text, reference §5.5) is the same from either source.
    """
    return table.assign(text=[line if line.strip() else "" for line in table["text"]])


def _harmbench_prompt(table: pd.DataFrame) -> pd.DataFrame:
    """HarmBench contextual behaviours are asked with their context first, as HarmBench formats them."""
    prompts = [
        f"{context}\n\n---\n\n{behavior}" if context.strip() else behavior
        for behavior, context in zip(table["Behavior"], table["ContextString"], strict=True)
    ]
    return table.assign(prompt=prompts)


def _instruction_prompt(table: pd.DataFrame) -> pd.DataFrame:
    """Instruction plus its input when there is one (every input of safety_only_data is empty today)."""
    prompts = [
        f"{instruction}\n\n{extra}" if str(extra).strip() else instruction
        for instruction, extra in zip(table["instruction"], table["input"], strict=True)
    ]
    return table.assign(prompt=prompts)


_MMLU_COLUMNS = ("question", "A", "B", "C", "D", "answer")
_MMLU_CHOICES = "ABCD"


def _mmlu_from_hub(table: pd.DataFrame, split: str) -> pd.DataFrame:
    """cais/mmlu rows (question, subject, choices[4], answer index) in the layout of the Hendrycks CSV files."""
    choices = [list(c) for c in table["choices"]]
    out = pd.DataFrame({"question": table["question"]})
    for i, letter in enumerate(_MMLU_CHOICES):
        out[letter] = [c[i] for c in choices]
    out["answer"] = [_MMLU_CHOICES[int(a)] for a in table["answer"]]
    out["subject"] = table["subject"]
    out["split"] = split
    return out


TRANSFORMS: dict[str, Callable[[pd.DataFrame], pd.DataFrame]] = {
    "repe_pairs": _repe_pairs,
    "wikitext_rows": _wikitext_rows,
    "harmbench_prompt": _harmbench_prompt,
    "instruction_prompt": _instruction_prompt,
}
# Hub tables are transformed per split (the split name is the second argument) before the entry's checks.
HUB_TRANSFORMS: dict[str, Callable[[pd.DataFrame, str], pd.DataFrame]] = {"mmlu_from_hub": _mmlu_from_hub}
