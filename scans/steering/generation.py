"""Batched greedy generation with the authors' decoding, optionally steered per row."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from scans.models.chat import Encoded
from scans.steering.batching import length_sorted_batches, pad_left
from scans.steering.hook import steering, steering_starts


@dataclass(frozen=True)
class DecodingConfig:
    """Greedy with repetition penalty 1.1 and 256 new tokens: the authors' `generate(top_k=1, ...)` (reference §4)."""

    max_new_tokens: int = 256
    repetition_penalty: float = 1.1
    batch_size: int = 16
    min_new_tokens: int = 0  # > 0 only to time a fixed number of tokens (benchmarks)


@dataclass(frozen=True)
class Steering:
    """What to add while generating: vectors (num_layers, D), the steered layers, α, and the positions policy."""

    vectors: torch.Tensor
    layers: Sequence[int]
    alpha: float
    positions: str = "from_instruction_end"


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[Encoded],
    decoding: DecodingConfig,
    steer: Steering | None = None,
    signs: torch.Tensor | None = None,
    desc: str | None = None,
) -> list[str]:
    """Greedy responses (decoded, special tokens dropped, stripped) in the order of `prompts`.

    With `steer`, row i gets signs[i]·α·v added (Eq. 6); `signs` defaults to -1 for every row (less refusal).
    """
    device = next(model.parameters()).device
    if steer is not None and signs is None:
        signs = -torch.ones(len(prompts))
    responses: list[str] = [""] * len(prompts)
    batches = list(length_sorted_batches([len(p.input_ids) for p in prompts], decoding.batch_size))
    for idx in tqdm(batches, desc=desc, disable=desc is None, leave=False):
        rows = [prompts[i] for i in idx]
        batch = pad_left([r.input_ids for r in rows], device)
        context = nullcontext()
        if steer is not None:
            starts = steering_starts(steer.positions, [r.eoi_index for r in rows], [len(r.input_ids) for r in rows])
            context = steering(model, steer.vectors, steer.layers, signs[idx] * steer.alpha, starts)
        with context:
            out = model.generate(
                input_ids=batch.input_ids,
                attention_mask=batch.attention_mask,
                max_new_tokens=decoding.max_new_tokens,
                min_new_tokens=decoding.min_new_tokens or None,
                do_sample=False,
                temperature=None,
                top_p=None,
                top_k=None,
                repetition_penalty=decoding.repetition_penalty,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        new = out[:, batch.input_ids.shape[1] :]
        for i, tokens in zip(idx, new):
            responses[i] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return responses
