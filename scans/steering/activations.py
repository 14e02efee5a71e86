"""Batched hidden states of chosen decoder layers at chosen token positions."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import torch
from tqdm.auto import tqdm

from scans.models.loading import decoder_layers, input_device
from scans.steering.batching import length_sorted_batches, pad_left


def layer_output(output):
    """Decoder layers return a tensor (transformers >= 5) or a tuple whose first item is the hidden states."""
    return output[0] if isinstance(output, tuple) else output


@contextmanager
def record_layer_outputs(model, layers: Sequence[int], store: dict[int, torch.Tensor]):
    """Record the output (residual stream) of each chosen decoder layer; hooks are removed in `finally`."""
    blocks = decoder_layers(model)
    handles = []
    try:
        for layer in layers:

            def hook(module, args, output, layer=layer):
                store[layer] = layer_output(output)

            handles.append(blocks[layer].register_forward_hook(hook))
        yield store
    finally:
        for handle in handles:
            handle.remove()


def base_forward(model, batch) -> None:
    """Run the decoder stack without the LM head (its vocab-sized logits are not needed here)."""
    body = model.get_decoder() if hasattr(model, "get_decoder") else model
    body(
        input_ids=batch.input_ids,
        attention_mask=batch.attention_mask,
        position_ids=batch.position_ids,
        use_cache=False,
    )


@torch.no_grad()
def hidden_states(
    model,
    rows: Sequence[Sequence[int]],
    positions: Sequence[Sequence[int]],
    layers: Sequence[int],
    batch_size: int = 16,
    desc: str | None = None,
) -> torch.Tensor:
    """Hidden states (N, P, L, D) in float32 on the CPU.

    `rows` are unpadded token ids; `positions[i]` are indices into row i (negative indices count from its end);
    `layers` are decoder-layer indices, and the state of layer l is that layer's output, the site where steering is
    added (the authors read HF `hidden_states[l + 1]`, the same tensor except after the last layer, where HF applies
    the final norm: reference §7 D15).
    """
    n_pos = len(positions[0])
    if any(len(p) != n_pos for p in positions):
        raise ValueError("every row needs the same number of positions")
    device = input_device(model)
    out: torch.Tensor | None = None
    lengths = [len(r) for r in rows]
    for idx in tqdm(list(length_sorted_batches(lengths, batch_size)), desc=desc, disable=desc is None, leave=False):
        batch = pad_left([rows[i] for i in idx], device)
        index = torch.tensor([[p if p >= 0 else lengths[i] + p for p in positions[i]] for i in idx], device=device)
        if ((index < 0) | (index >= torch.tensor([lengths[i] for i in idx], device=device)[:, None])).any():
            raise IndexError("a position lies outside its row")
        cols = batch.column(index)  # (b, P)
        store: dict[int, torch.Tensor] = {}
        with record_layer_outputs(model, layers, store):
            base_forward(model, batch)
        gathered = torch.stack(
            [store[layer].gather(1, cols[..., None].expand(-1, -1, store[layer].shape[-1])) for layer in layers],
            dim=2,
        )  # (b, P, L, D)
        if out is None:
            out = torch.empty((len(rows), n_pos, len(layers), gathered.shape[-1]), dtype=torch.float32)
        out[idx] = gathered.float().cpu()
    assert out is not None
    return out


@torch.no_grad()
def last_token_outputs(
    model, rows: Sequence[Sequence[int]], modules: dict[str, torch.nn.Module], batch_size: int = 16, desc=None
) -> dict[str, torch.Tensor]:
    """Each named module's output (N, D) float32 at every row's last token (sublayer outputs: an attention output
    projection, an MLP down projection)."""
    device = input_device(model)
    out: dict[str, torch.Tensor] = {}
    batches = list(length_sorted_batches([len(r) for r in rows], batch_size))
    for idx in tqdm(batches, desc=desc, disable=desc is None, leave=False):
        batch = pad_left([rows[i] for i in idx], device)  # left padding: the last column is every row's last token
        store: dict[str, torch.Tensor] = {}
        handles = []
        try:
            for name, module in modules.items():

                def hook(module, args, output, name=name):
                    store[name] = layer_output(output)[:, -1].float().cpu()

                handles.append(module.register_forward_hook(hook))
            base_forward(model, batch)
        finally:
            for handle in handles:
                handle.remove()
        for name, value in store.items():
            if name not in out:
                out[name] = torch.empty((len(rows), value.shape[-1]), dtype=torch.float32)
            out[name][idx] = value
    return out
