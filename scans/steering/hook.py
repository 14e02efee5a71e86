"""The steering hook: adds sign·α·v^l to the output of chosen decoder layers, one sign per batch row.

Positions are an explicit contract. Every row has a start index s_i in its own *unpadded* token sequence; a token
is steered iff its position id (its index in the unpadded row, which HF generate derives from the attention mask
under left padding, prefill and one-token decode steps alike) is >= s_i. The policies:

- `from_instruction_end` (the authors' behaviour, default): s_i = end-of-instruction index, so the last marker
  token and every generated token are steered, never the user's query (reference §4, `add_vector_after_position`);
- `all`: s_i = 0, every token of the row;
- `generated`: s_i = prompt length, only tokens fed back during decoding.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch

from scans.errors import ConfigError, ModelError
from scans.models.loading import decoder_layers

POSITION_POLICIES = ("from_instruction_end", "all", "generated")


def steering_starts(policy: str, eoi_index: Sequence[int], prompt_length: Sequence[int]) -> torch.Tensor:
    """Per-row start index (in unpadded token positions) for a positions policy."""
    if policy == "from_instruction_end":
        starts = list(eoi_index)
    elif policy == "all":
        starts = [0] * len(eoi_index)
    elif policy == "generated":
        starts = list(prompt_length)
    else:
        raise ConfigError(f"steer.positions={policy!r}; expected one of {', '.join(POSITION_POLICIES)}")
    return torch.tensor(starts, dtype=torch.long)


def steering_mask(position_ids: torch.Tensor, starts: torch.Tensor) -> torch.Tensor:
    """(B, T) boolean mask of the tokens to steer, from position ids (B, T) or (1, T) and per-row starts (B,)."""
    return position_ids >= starts[:, None]


@contextmanager
def steering(
    model,
    vectors: torch.Tensor,
    layers: Sequence[int],
    coefficients: torch.Tensor,
    starts: torch.Tensor,
):
    """Add coefficients[i] · vectors[l] to row i of the output of each layer l in `layers`, at steered positions.

    `vectors` is (num_layers, D); `coefficients` (B,) is sign·α per row (Eq. 6), `starts` (B,) from
    `steering_starts`. Forward hooks only, no module is replaced; they are removed in `finally`, also when the
    forward pass or generation raises. It yields a `RowState` through which the generation engine drops the rows
    that have finished.

    Each layer's addition is computed in float32 on the CPU once, then follows the layer's output to its device and
    dtype at the first call (a model split by `device_map` has its layers on several devices, and a layer offloaded
    by accelerate holds its weights on "meta" until it runs, so only the output tells where the layer runs).
    """
    blocks = decoder_layers(model)
    coef = coefficients.detach().to(device="cpu", dtype=torch.float32)[:, None]  # (B, 1)
    rows = RowState(starts)
    handles = []

    def make_hook(delta: torch.Tensor):
        # delta (B, 1, D) = sign·α·v^l per row, computed once per context rather than at every decoding step.
        placed: dict = {}

        def hook(module, args, kwargs, output):
            hidden = output[0] if isinstance(output, tuple) else output
            position_ids = kwargs.get("position_ids")
            if position_ids is None:
                raise ModelError(f"{type(module).__name__} received no position_ids; cannot place steering")
            where = (hidden.device, hidden.dtype, rows.version)
            if where not in placed:  # once per context, and again only when the engine drops rows
                d_all, start_all = rows.view(delta)
                placed.clear()
                placed[where] = (d_all.to(device=hidden.device, dtype=hidden.dtype), start_all.to(hidden.device))
            d, start = placed[where]
            if hidden.shape[0] != d.shape[0]:
                raise ModelError(f"batch of {hidden.shape[0]} rows but {d.shape[0]} steering coefficients")
            mask = steering_mask(position_ids.to(hidden.device), start).unsqueeze(-1)  # (B, T, 1)
            steered = hidden.addcmul(mask.to(hidden.dtype), d)
            return (steered, *output[1:]) if isinstance(output, tuple) else steered

        return hook

    try:
        for layer in layers:
            delta = (coef * vectors[layer].detach().to(device="cpu", dtype=torch.float32))[:, None, :]
            handles.append(blocks[layer].register_forward_hook(make_hook(delta), with_kwargs=True))
        yield rows
    finally:
        for handle in handles:
            handle.remove()


class RowState:
    """Which rows of the batch are still decoding: the generation engine drops finished rows (`select`), and the
    hooks then read their own rows' additions and starts."""

    def __init__(self, starts: torch.Tensor):
        self.starts = starts
        self.index: torch.Tensor | None = None  # kept rows, in the original batch's numbering
        self.version = 0

    def select(self, keep: torch.Tensor) -> None:
        """Keep rows `keep` (indices into the current rows)."""
        keep = keep.to("cpu")
        self.index = keep if self.index is None else self.index[keep]
        self.version += 1

    def view(self, delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.index is None:
            return delta, self.starts
        return delta[self.index], self.starts[self.index]
