"""AlphaSteer's steering (ICLR 2026; AlphaLab-USTC/AlphaSteer): a per-layer matrix Δ in the approximate null space of
benign activations, so that benign prompts are barely steered while harmful ones are pushed along the refusal vector.

With rows as samples, H_b (N, D) benign and H_h (M, D) harmful states of one layer, and r (D,) that layer's refusal
vector:

- P = Q Qᵀ projects on the null space of the benign states: Q holds the right singular vectors of H_bᵀH_b with the
  `ratio`·D smallest singular values (no centring);
- Δ̃ minimises ‖H_h P Δ̃ − 1 rᵀ‖² + λ‖P Δ̃‖² (every harmful state is mapped to r): Δ̃ = (P H_hᵀH_h P + λP)⁺ P H_hᵀ 1 rᵀ;
- Δ = P Δ̃ = u rᵀ with u = P (P H_hᵀH_h P + λP)⁺ P H_hᵀ 1: one matrix of rank one, kept as the gate u and r.

A state h (row vector) is steered by s = α·hΔ = α·(h·u)·r: h of the row's last prompt token, s added to every prompt
position during the prompt's forward pass; decoding steps are not steered (they see it through the KV cache).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch

from scans.errors import ModelError
from scans.models.loading import decoder_layers
from scans.steering.activations import layer_output
from scans.steering.hook import RowState


def null_space_projector(benign: torch.Tensor, ratio: float) -> torch.Tensor:
    """(D, D) projector on the span of the int(ratio·D) right singular vectors of H_bᵀH_b with the smallest
    singular values."""
    h = benign.double()
    d = h.shape[1]
    k = int(d * ratio)
    if not 0 < k <= d:
        raise ValueError(f"null-space ratio {ratio} keeps {k} of {d} dimensions")
    _, _, vh = torch.linalg.svd(h.T @ h)
    q = vh[-k:].T  # singular values come in descending order: the last k
    return q @ q.T


def steering_gate(harmful: torch.Tensor, projector: torch.Tensor, ridge: float) -> torch.Tensor:
    """u (D,) of Δ = u rᵀ, the ridge-regularised least squares that maps harmful states (M, D) to r inside the null
    space `projector`."""
    h = harmful.double()
    p = projector.double()
    a = p @ h.T @ h @ p + ridge * p
    return p @ torch.linalg.pinv(a, hermitian=True) @ (p @ h.T @ torch.ones(h.shape[0], dtype=h.dtype))


@contextmanager
def null_space_steering(
    model,
    gates: torch.Tensor,
    vectors: torch.Tensor,
    layers: Sequence[int],
    alpha: float,
    reads: torch.Tensor,
):
    """Steer each of `layers`' outputs by α·(h·u^l)·r^l on every position up to the row's read position `reads[i]`
    (its last prompt token, an unpadded index), h being that layer's output there; only in the forward pass that holds
    the read position (the prompt's). gates, vectors (num_layers, D). Hooks are removed in `finally`; yields the
    `RowState` through which the engine drops finished rows."""
    blocks = decoder_layers(model)
    rows = RowState(reads.to("cpu", torch.long))
    handles = []

    def make_hook(u: torch.Tensor, r: torch.Tensor):
        def hook(module, args, kwargs, output):
            hidden = layer_output(output)
            position_ids = kwargs.get("position_ids")
            if position_ids is None:
                raise ModelError(f"{type(module).__name__} received no position_ids; cannot place steering")
            _, read = rows.view(rows.starts)
            if hidden.shape[0] != read.shape[0]:
                raise ModelError(f"batch of {hidden.shape[0]} rows but {read.shape[0]} read positions")
            pos = position_ids.to(hidden.device).expand(hidden.shape[0], -1)
            read = read.to(hidden.device)[:, None]
            at = pos == read  # (B, T): the read position, where this pass holds it
            if not bool(at.any()):
                return output
            state = (hidden.float() * at[..., None]).sum(1)  # (B, D), zero where the pass has no read position
            gate = alpha * (state @ u.to(hidden.device))  # (B,)
            where = (pos <= read) & at.any(1, keepdim=True)
            shift = where[..., None] * gate[:, None, None] * r.to(hidden.device)
            steered = (hidden.float() + shift).to(hidden.dtype)
            return (steered, *output[1:]) if isinstance(output, tuple) else steered

        return hook

    try:
        for layer in layers:
            u = gates[layer].detach().float().cpu()
            r = vectors[layer].detach().float().cpu()
            handles.append(blocks[layer].register_forward_hook(make_hook(u, r), with_kwargs=True))
        yield rows
    finally:
        for handle in handles:
            handle.remove()
