"""The authors' steering, written for the tests from the reference's description alone (reference §4,
`BlockOutputWrapper` and `add_vector_after_position`), never from project code: the golden tests compare the
project's batched hook with it."""

from __future__ import annotations

from contextlib import contextmanager

import torch


def marker_end(ids: list[int], marker: list[int]) -> int:
    """Index of the last token of the last occurrence of `marker` in `ids` (token-subsequence search)."""
    for start in range(len(ids) - len(marker), -1, -1):
        if ids[start : start + len(marker)] == marker:
            return start + len(marker) - 1
    raise AssertionError(f"instruction-end marker {marker} not in {ids}")  # the authors' code returned -1 here


class BlockOutputWrapper(torch.nn.Module):
    """Replaces a decoder block: its output plus `vector` at every position id >= `after`."""

    def __init__(self, block, vector: torch.Tensor, after: int):
        super().__init__()
        self.block, self.vector, self.after = block, vector, after

    def forward(self, *args, **kwargs):
        out = self.block(*args, **kwargs)
        hidden = out[0] if isinstance(out, tuple) else out
        after = kwargs["position_ids"] >= self.after  # (1, T): absolute positions of the one unpadded row
        hidden = hidden + after[..., None].to(hidden.dtype) * self.vector.to(hidden)
        return (hidden, *out[1:]) if isinstance(out, tuple) else hidden


@contextmanager
def after_position(model, added: dict[int, torch.Tensor], after: int):
    """`added[l]` on block l's output from position `after` on, for one unpadded row; the blocks are put back."""
    blocks = model.model.layers
    originals = {layer: blocks[layer] for layer in added}
    try:
        for layer, vector in added.items():
            blocks[layer] = BlockOutputWrapper(originals[layer], vector, after)
        yield
    finally:
        for layer, block in originals.items():
            blocks[layer] = block
