"""Left-padded batches whose position ids match the unpadded rows."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch


@dataclass
class PaddedBatch:
    input_ids: torch.Tensor  # (B, T), left-padded
    attention_mask: torch.Tensor  # (B, T), 0 on padding
    position_ids: torch.Tensor  # (B, T), index of the token in its unpadded row; 0 on padding (as HF generate)
    pad_lengths: torch.Tensor  # (B,)

    def column(self, row_index: torch.Tensor) -> torch.Tensor:
        """Absolute columns of per-row token indices (B,) or (B, P) in the padded tensor."""
        pads = self.pad_lengths.to(row_index.device)
        return row_index + (pads if row_index.dim() == 1 else pads[:, None])


def pad_left(rows: Sequence[Sequence[int]], device: torch.device | str = "cpu") -> PaddedBatch:
    """Left-pad token rows.

    Each row is padded with its *own first token*: the padding is masked out of attention, and HF's repetition
    penalty (which looks at every input id, padding included) then sees exactly the tokens of the unpadded row,
    so batched greedy decoding matches one-by-one decoding.
    """
    width = max(len(r) for r in rows)
    ids = torch.empty((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        pad = width - len(row)
        ids[i, :pad] = row[0]
        ids[i, pad:] = torch.tensor(row, dtype=torch.long)
        mask[i, pad:] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0) * mask
    pads = width - mask.sum(-1)
    return PaddedBatch(ids.to(device), mask.to(device), positions.to(device), pads.to(device))


def length_sorted_batches(lengths: Sequence[int], batch_size: int) -> Iterator[list[int]]:
    """Indices grouped into batches of similar length (longest first), to waste little compute on padding."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]
