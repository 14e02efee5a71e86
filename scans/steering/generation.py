"""Batched greedy generation with the authors' decoding, through a method's intervention (steering, insertions,
logits processors, companion rows), per row."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm
from transformers import LogitsProcessorList

from scans.errors import ConfigError
from scans.models.chat import Encoded
from scans.models.loading import input_device
from scans.steering.batching import length_sorted_batches, pad_left
from scans.steering.engine import PrefixCache, decode_batch
from scans.steering.hook import steering, steering_starts
from scans.steering.intervention import Intervention, Row, insert_encoded

ENGINES = ("scans", "hf")


@dataclass(frozen=True)
class DecodingConfig:
    """Greedy with repetition penalty 1.1 and 256 new tokens: the authors' `generate(top_k=1, ...)` (reference §4)."""

    max_new_tokens: int = 256
    repetition_penalty: float = 1.1
    batch_size: int = 16
    min_new_tokens: int = 0  # > 0 only to time a fixed number of tokens (benchmarks)
    engine: str = "scans"  # scans (shared-prefix cache, scans/steering/engine.py) | hf (transformers' generate)


@dataclass(frozen=True)
class Steering(Intervention):
    """Activation steering (Eq. 6): row i gets coefficient_i · v^l added to the output of each steered layer l, at
    the positions of the policy. vectors (num_layers, D); α scales the default coefficients (-α: less refusal)."""

    vectors: torch.Tensor
    layers: Sequence[int]
    alpha: float
    positions: str = "from_instruction_end"

    @contextmanager
    def active(self, model, rows: Sequence[Row]) -> Iterator[None]:
        starts = self.starts(rows)
        coefs = torch.tensor([r.coefficient for r in rows], dtype=torch.float32)
        with steering(model, self.vectors, self.layers, coefs, starts) as state:
            yield state

    def starts(self, rows: Sequence[Row]) -> torch.Tensor:
        return steering_starts(self.positions, [r.eoi_index for r in rows], [r.length for r in rows])

    def untouched_prefix(self, rows: Sequence[Row]) -> int:
        return int(self.starts(rows).min())

    def compactable(self) -> bool:
        return True  # `active` yields the hooks' RowState

    def acts_like(self, other: Intervention) -> bool:
        """The same layers, positions and vectors: α only scales the per-row coefficients."""
        if other is self:
            return True
        if (
            type(other) is not type(self)
            or list(other.layers) != list(self.layers)
            or other.positions != self.positions
        ):
            return False
        return other.vectors.shape == self.vectors.shape and bool(torch.equal(other.vectors, self.vectors))


@torch.no_grad()
def generate(
    model,
    tokenizer,
    prompts: Sequence[Encoded],
    decoding: DecodingConfig,
    steer: Steering | None = None,
    signs: torch.Tensor | None = None,
    desc: str | None = None,
    *,
    intervention: Intervention | None = None,
    coefficients: torch.Tensor | None = None,
) -> list[str]:
    """Greedy responses (decoded, special tokens dropped, stripped) in the order of `prompts`.

    Through `intervention` with its per-row `coefficients`; or, as a shorthand, with `steer`: row i gets
    signs[i]·α·v added (Eq. 6), `signs` defaulting to -1 for every row (less refusal).
    """
    if steer is not None:
        intervention = steer
        coefficients = (-torch.ones(len(prompts)) if signs is None else signs.float()) * steer.alpha
    iv = intervention or Intervention()
    if decoding.engine not in ENGINES:
        raise ConfigError(f"generation.engine={decoding.engine!r}; expected one of {', '.join(ENGINES)}")
    device = input_device(model)
    encoded = [insert_encoded(p, iv.insertion) for p in prompts]
    responses: list[str] = [""] * len(prompts)
    prefix = PrefixCache(model)
    batches = list(length_sorted_batches([len(p.input_ids) for p in encoded], decoding.batch_size))
    for idx in tqdm(batches, desc=desc, disable=desc is None, leave=False):
        own = [encoded[i] for i in idx]
        extra = iv.companions(own)  # generated in the same batch, ahead of the rows (Self-CD's second pass)
        rows = extra + own
        coefs = [0.0 if coefficients is None else float(coefficients[i]) for i in idx]
        plan = [Row(r.eoi_index, len(r.input_ids), r.query_start, coefs[j % len(own)]) for j, r in enumerate(rows)]
        if decoding.engine == "hf":
            new = hf_generate(model, tokenizer, [r.input_ids for r in rows], plan, iv, decoding, device)
        else:
            new = decode_batch(
                model, tokenizer, [r.input_ids for r in rows], plan, iv, decoding.max_new_tokens,
                decoding.repetition_penalty, decoding.min_new_tokens, prefix, device,
            )  # fmt: skip
        for i, tokens in zip(idx, new[len(extra) :]):
            responses[i] = tokenizer.decode(tokens, skip_special_tokens=True).strip()
    return responses


def hf_generate(model, tokenizer, rows, plan: Sequence[Row], iv: Intervention, decoding: DecodingConfig, device):
    """One batch through transformers' `generate`, left-padded (the reference the engine is tested against)."""
    batch = pad_left(rows, device)
    plan = [dataclasses.replace(r, offset=int(batch.pad_lengths[j])) for j, r in enumerate(plan)]
    processor = iv.processor(model, batch.attention_mask, plan)
    with iv.active(model, plan):
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
            logits_processor=None if processor is None else LogitsProcessorList([processor]),
        )
    return out[:, batch.input_ids.shape[1] :]
