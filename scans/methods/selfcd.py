"""Self-CD (Shi et al. 2024, "Navigating the OverKill in Large Language Models"): self-contrastive decoding.

Every decoding step runs the model twice, in one batch: with the safety text before the query (logits y, the
released SelfCD.py puts it inline in the user turn) and without it (y'). The next token is the argmax of
y - α(y - y'), α = 2.5 (the released ratio): the part of the output that the safety text adds, the "over-attention"
to harmful words, is subtracted. Both rows of a pair get the chosen token, so they stay in step.

Teacher-forced scoring (perplexity, MMLU) combines the two passes the same way at every position: the pass with the
safety text is aligned to the plain one by dropping the inserted positions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor

from scans.methods.base import Intervention, Method, Row, forward_logits, gather_positions, insert_encoded, insert_rows
from scans.models.chat import tokenize

# The released SelfCD.py's safety text (InvokerStark/OverKill).
SAFETY_TEXT = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe. "
    "Your answers should not include any harmful, unethical, racist, sexist, toxic, dangerous, or illegal content."
)


def contrast(y: torch.Tensor, y_plain: torch.Tensor, ratio: float) -> torch.Tensor:
    """y - α(y - y'): y with the safety text, y' without. A token that a processor has ruled out (-inf in either
    pass, e.g. EOS under `min_new_tokens`) stays ruled out instead of becoming NaN."""
    out = y - ratio * (y - y_plain)
    return torch.where(torch.isfinite(y) & torch.isfinite(y_plain), out, torch.minimum(y, y_plain))


class ContrastProcessor(LogitsProcessor):
    """For a batch of 2B rows (B with the safety text, then their B plain twins): both halves get the contrast."""

    def __init__(self, ratio: float):
        self.ratio = ratio

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        b = scores.shape[0] // 2
        combined = contrast(scores[:b], scores[b:], self.ratio)
        return torch.cat([combined, combined])


@dataclass(frozen=True)
class SelfCDIntervention(Intervention):
    safety: tuple[int, ...] = ()
    ratio: float = 2.5
    passes: int = 2

    def companions(self, prompts):
        return [insert_encoded(p, self.safety) for p in prompts]

    def processor(self, model, attention_mask, rows: Sequence[Row]):
        return ContrastProcessor(self.ratio)

    def compactable(self) -> bool:
        """Both rows of a pair get the same contrasted scores, so they choose the same token and finish together; the
        engine keeps the unfinished rows in order, the pairs' first halves and then their twins, which is the layout
        `ContrastProcessor` reads. The processor holds no per-row state."""
        return True

    def logits(self, model, input_ids, attention_mask, rows):
        ids, mask, _, index = insert_rows(input_ids, attention_mask, rows, self.safety)
        width = ids.shape[1]
        pad = width - input_ids.shape[1]
        plain_ids = torch.nn.functional.pad(input_ids, (0, pad), value=0)
        plain_mask = torch.nn.functional.pad(attention_mask, (0, pad), value=0)
        out = forward_logits(model, torch.cat([ids, plain_ids]), torch.cat([mask, plain_mask]))
        b, t = input_ids.shape
        return contrast(gather_positions(out[:b], index), out[b:, :t], self.ratio)


@dataclass(frozen=True)
class SelfCD(Method):
    ratio: float = 2.5
    safety_text: str = SAFETY_TEXT
    separator: str = " "

    def intervention(self, run) -> SelfCDIntervention:
        return SelfCDIntervention(tuple(tokenize(run.lm.tokenizer, self.safety_text + self.separator)), self.ratio)
