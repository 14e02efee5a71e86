"""The intervention protocol: how a method changes the forward passes, as every consumer sees it.

The engine, HF-style generation, MMLU, perplexity and cost all act through an `Intervention` and the `Row`s of a
batch; a method of `scans.methods` builds one. Pure torch: nothing here knows of runs, stages or artifacts.

An intervention changes the forward passes in up to three ways, each with a no-op default:

- `insertion`: token ids inserted at each query's first token (few-shot examples, DRO's soft-prompt slots);
- `active(model, rows)`: a context manager around every forward pass of a batch (steering hooks, weight edits);
- `processor(model, batch, rows)`: a logits processor for generation (Self-CD's contrast, SafeDecoding's expert),
  with `logits(...)` as its teacher-forced counterpart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from scans.errors import ModelError

if TYPE_CHECKING:
    from scans.models.chat import Encoded


@dataclass(frozen=True)
class Row:
    """One row of a batch as an intervention sees it; indices are in the unpadded row."""

    eoi_index: int  # end of the instruction (MMLU: the last "\nAnswer:"); steering starts here
    length: int  # unpadded length (prompt only, during generation)
    query_start: int | None = None  # first token of the query, where insertions go
    coefficient: float = 0.0  # this row's value of `coefficients`
    offset: int = 0  # the column of the row's index 0 in the forward pass that holds its prompt (left padding)


class Intervention:
    """No intervention: the model as it is (the Default row). Subclasses override what they change."""

    insertion: tuple[int, ...] = ()  # token ids inserted at every query's start
    passes: int = 1  # forward passes per decoding step (reported with Table 4)

    @contextmanager
    def active(self, model, rows: Sequence[Row]) -> Iterator[None]:
        """Hooks or weight edits around every forward pass of one batch (rows in batch order)."""
        yield

    def untouched_prefix(self, rows: Sequence[Row]) -> int:
        """How many leading tokens of every row (unpadded indices) the intervention leaves as they are, so that the
        engine may compute their KV cache once, without it: all of them when `active` is not overridden, none for
        an override that does not say."""
        return 1 << 30 if type(self).active is Intervention.active else 0

    def acts_like(self, other: Intervention) -> bool:
        """Whether `other` changes the forward passes exactly as this one does for the same per-row coefficients, so
        that their rows may share one batch (SCANS rows that differ in α alone). By default only itself."""
        return other is self

    def compactable(self) -> bool:
        """Whether the engine may drop finished rows from a batch mid-generation. It may when nothing holds per-row
        state: no override of `active` (or one whose context yields an object with `select(keep)`, told which rows
        remain, or whose per-row state only acts on the prompt's pass), no processor, no companion rows."""
        base = Intervention
        return all(getattr(type(self), f) is getattr(base, f) for f in ("active", "processor", "companions"))

    def processor(self, model, attention_mask: torch.Tensor, rows: Sequence[Row]):
        """A logits processor for generation over this batch, or None."""
        return None

    def companions(self, prompts: Sequence[Encoded]) -> list[Encoded]:
        """Extra rows generated in the same batch, ahead of the rows themselves (Self-CD's second pass)."""
        return []

    def logits(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: Sequence[Row]) -> torch.Tensor:
        """Teacher-forced next-token logits (B, T, V) of right-padded rows, as generation would score them."""
        with self.active(model, rows):
            return forward_logits(model, input_ids, attention_mask)


def forward_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """One plain forward pass of right-padded rows (no mask when nothing is padded, as lm-eval calls the model)."""
    return model(input_ids=input_ids, attention_mask=None if bool(attention_mask.all()) else attention_mask).logits


# Insertion: the same tokens go in at each row's query start, in generation and in teacher-forced scoring alike.


def insert_encoded(enc: Encoded, ids: Sequence[int]) -> Encoded:
    """`enc` with `ids` inserted before the query's first token (end of instruction shifted accordingly)."""
    if not ids:
        return enc
    if enc.query_start is None:
        raise ModelError(
            "this method inserts text before the query, but the chat format's tokens before the query are not a "
            "prefix of the prompt's tokens, so the query's first token cannot be located"
        )
    qs = enc.query_start
    return dataclasses.replace(
        enc, input_ids=[*enc.input_ids[:qs], *ids, *enc.input_ids[qs:]], eoi_index=enc.eoi_index + len(ids)
    )


def insert_rows(
    input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: Sequence[Row], ids: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor, list[Row], torch.Tensor]:
    """Right-padded rows with `ids` inserted at each row's query start.

    Returns the new ids and mask (B, T + S), the shifted rows, and for every original position j the position of the
    new sequence whose logits predict the same next token (B, T): j before the query, j + S from its last
    preceding token on. Gathering the new logits there gives logits aligned with the original rows.
    """
    n = len(ids)
    b, t = input_ids.shape
    index = torch.arange(t).repeat(b, 1)
    if n == 0:
        return input_ids, attention_mask, list(rows), index
    extra = torch.tensor(list(ids), dtype=input_ids.dtype, device=input_ids.device)
    new_ids, new_mask, new_rows = [], [], []
    for i, row in enumerate(rows):
        if row.query_start is None:
            raise ModelError("this method inserts text before the query, but a row has no query start")
        qs = row.query_start
        new_ids.append(torch.cat([input_ids[i, :qs], extra, input_ids[i, qs:]]))
        new_mask.append(torch.cat([attention_mask[i, :qs], torch.ones_like(extra), attention_mask[i, qs:]]))
        new_rows.append(dataclasses.replace(row, eoi_index=row.eoi_index + n, length=row.length + n))
        index[i, max(qs - 1, 0) :] += n
    return torch.stack(new_ids), torch.stack(new_mask), new_rows, index.to(input_ids.device)


def gather_positions(logits: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """logits (B, T', V) read at positions index (B, T) -> (B, T, V)."""
    return logits.gather(1, index[..., None].expand(-1, -1, logits.shape[-1]))


def teacher_forced_logits(
    intervention: Intervention, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, rows: Sequence[Row]
) -> torch.Tensor:
    """The logits every teacher-forced consumer (perplexity, MMLU) reads: insertion, then the method's forward
    pass, aligned back to the original rows' positions."""
    ids, mask, new_rows, index = insert_rows(input_ids, attention_mask, rows, intervention.insertion)
    out = intervention.logits(model, ids, mask, new_rows)
    return out if not intervention.insertion else gather_positions(out, index)
