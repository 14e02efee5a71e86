"""The generation engine: greedy decoding of one batch with a shared-prefix KV cache and an explicit decode loop.

Every prompt of a run starts with the same chat-template tokens (system prompt, the user turn's header, a few-shot
block). The engine runs that common prefix once, on one row, and repeats its KV cache over the batch; only each
row's own suffix is prefilled. The cache's columns are then

    [common prefix (P)] [left padding of the suffix (pad_i)] [row i's suffix] [generated tokens]

and every token carries its position in its own unpadded row, as a one-by-one run would (position ids are passed
explicitly, so the steering hook's positions contract holds). A prefix is shared only where the intervention does
not touch it (`Intervention.untouched_prefix`): the steering hook starts at the end of the instruction, insertions
and soft prompts at the query; a weight edit touches everything, and then the whole prompt is prefilled per row.

Decoding is HF's greedy search, step for step: the repetition penalty over every input id (padding is filled with a
token of its own row, so the penalised set is the unpadded row's), `min_new_tokens`, the method's logits processor,
then argmax; a finished row is fed the pad token, and the loop stops when every row has finished.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import torch
from transformers import DynamicCache
from transformers.cache_utils import Cache, DynamicLayer
from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

from scans.models.loading import flat_head_input
from scans.steering.intervention import Intervention, Row


def common_prefix(rows: Sequence[Sequence[int]]) -> int:
    """Length of the longest token prefix shared by every row."""
    first, n = rows[0], min(len(r) for r in rows)
    for j in range(n):
        t = first[j]
        if any(r[j] != t for r in rows):
            return j
    return n


class PreallocatedLayer(DynamicLayer):
    """A dynamic cache layer over a buffer allocated once for the whole generation: each step writes its keys and
    values in place and attention reads a view of the filled columns, instead of `torch.cat` copying the whole
    cache at every step (most of a decoding step's time on a CPU at batch 64 and more)."""

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, capacity: int):
        super().__init__()
        b, h, n, d = keys.shape
        self.device = keys.device
        self.buf_k = keys.new_empty((b, h, capacity, d))
        self.buf_v = values.new_empty((b, h, capacity, values.shape[-1]))
        self.buf_k[:, :, :n] = keys
        self.buf_v[:, :, :n] = values
        self.n = n
        self.keys, self.values = self.buf_k[:, :, :n], self.buf_v[:, :, :n]
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        m = self.n + key_states.shape[-2]
        if m > self.buf_k.shape[-2]:
            raise RuntimeError(f"KV cache of {self.buf_k.shape[-2]} columns is full")
        self.buf_k[:, :, self.n : m] = key_states
        self.buf_v[:, :, self.n : m] = value_states
        self.n = m
        self.keys, self.values = self.buf_k[:, :, :m], self.buf_v[:, :, :m]
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.n

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        self.buf_k, self.buf_v = self.buf_k[indices], self.buf_v[indices]
        self.keys, self.values = self.buf_k[:, :, : self.n], self.buf_v[:, :, : self.n]


def batch_cache(model, prefix: DynamicCache | None, rows: int, capacity: int, device) -> Cache:
    """An empty cache for `rows` rows of up to `capacity` columns, holding `prefix` (one row) in its first columns.
    Preallocated where every layer is a plain (full-attention) dynamic layer; a model with sliding-window or other
    layers gets transformers' own DynamicCache, grown by concatenation."""
    plain = DynamicCache(config=model.config)
    if not all(type(layer) is DynamicLayer for layer in plain.layers):
        if prefix is not None:
            for i, layer in enumerate(prefix.layers):
                plain.update(layer.keys.expand(rows, -1, -1, -1), layer.values.expand(rows, -1, -1, -1), i)
        return plain
    cfg = model.config.get_text_config()
    heads = getattr(cfg, "num_key_value_heads", None) or cfg.num_attention_heads
    dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    dtype = next(model.parameters()).dtype
    layers = []
    for i in range(cfg.num_hidden_layers):
        if prefix is not None:
            k, v = prefix.layers[i].keys.expand(rows, -1, -1, -1), prefix.layers[i].values.expand(rows, -1, -1, -1)
        else:
            k = v = torch.empty((rows, heads, 0, dim), dtype=dtype, device=device)
        layers.append(PreallocatedLayer(k, v, capacity))
    return Cache(layers=layers)


class PrefixCache:
    """The KV cache of one token prefix on one row, computed once and repeated over each batch that shares it."""

    def __init__(self, model):
        self.model = model
        self.ids: tuple[int, ...] = ()
        self.cache: DynamicCache | None = None

    def batch(self, ids: Sequence[int], rows: int, capacity: int, device) -> Cache:
        """A fresh cache of `rows` rows and `capacity` columns whose first columns hold `ids`."""
        ids = tuple(ids)
        if ids and ids != self.ids:
            x = torch.tensor([ids], dtype=torch.long, device=device)
            positions = torch.arange(len(ids), device=device)[None]
            with contiguous_head_input(self.model):  # the head's input is a strided slice of one row here too
                out = self.model(input_ids=x, position_ids=positions, use_cache=True, logits_to_keep=1)
            self.ids, self.cache = ids, out.cache
        return batch_cache(self.model, self.cache if ids else None, rows, capacity, device)


def suffix_batch(rows: Sequence[Sequence[int]], p: int, device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The rows' tokens after the shared prefix, left-padded (padding: each row's own first suffix token)."""
    width = max(len(r) for r in rows) - p
    ids = torch.empty((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        own = row[p:]
        pad = width - len(own)
        ids[i, :pad] = own[0]
        ids[i, pad:] = torch.tensor(own, dtype=torch.long)
        mask[i, pad:] = 1
    positions = p + (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(device), mask.to(device), positions.to(device)


@torch.no_grad()
def decode_batch(
    model,
    tokenizer,
    rows: Sequence[Sequence[int]],
    plan: Sequence[Row],
    intervention: Intervention,
    max_new_tokens: int,
    repetition_penalty: float,
    min_new_tokens: int,
    prefix: PrefixCache,
    device,
) -> torch.Tensor:
    """Greedy new tokens (B, <= max_new_tokens) of token rows, through the intervention; `plan` holds each row's
    unpadded indices and coefficient (its `offset` is set here)."""
    p = min(common_prefix(rows), min(len(r) for r in rows) - 1, intervention.untouched_prefix(plan))
    p = max(p, 0)
    b = len(rows)
    ids, mask, positions = suffix_batch(rows, p, device)
    pads = ids.shape[1] - mask.sum(-1)
    # offset: the column of unpadded index 0 in the forward pass that holds the prompt (the suffix's), so that
    # offset + j is index j's column for every j >= p.
    plan = [Row(r.eoi_index, r.length, r.query_start, r.coefficient, int(pads[i]) - p) for i, r in enumerate(plan)]
    cache = prefix.batch(rows[0][:p], b, p + ids.shape[1] + max_new_tokens, device)
    full_ids = torch.cat([ids.new_tensor(rows[0][:p]).expand(b, p), ids], dim=1)
    full_mask = torch.cat([mask.new_ones(b, p), mask], dim=1)
    eos = tokenizer.eos_token_id
    eos_ids = torch.tensor([eos] if isinstance(eos, int) else list(eos), device=device)
    own = intervention.processor(model, full_mask, plan)
    pad_id = tokenizer.pad_token_id
    result = torch.full((b, max_new_tokens), pad_id, dtype=torch.long, device=device)
    alive = torch.arange(b, device=device)  # the batch's rows still decoding, in its original numbering
    compact = intervention.compactable()  # a processor or companions rule it out unless the intervention allows it
    unfinished = torch.ones(b, dtype=torch.bool, device=device)
    steps = 0
    with contiguous_head_input(model), intervention.active(model, plan) as state:
        out = model(
            input_ids=ids, attention_mask=full_mask, position_ids=positions, cache=cache, use_cache=True,
            logits_to_keep=1,
        )  # fmt: skip
        step_positions = positions[:, -1:]
        while True:
            scores = out.logits[:, -1].float()
            if repetition_penalty != 1.0:
                penalise_repeats_(scores, full_ids, repetition_penalty)
            if steps < min_new_tokens:
                scores[:, eos_ids] = -math.inf
            if own is not None:
                scores = own(full_ids, scores)
            token = torch.where(unfinished, scores.max(-1).indices, pad_id)  # argmax (first of ties), 3x faster
            result[alive, steps] = token
            steps += 1
            unfinished &= ~torch.isin(token, eos_ids)
            if not unfinished.any() or steps == max_new_tokens:
                break
            full_ids = torch.cat([full_ids, token[:, None]], dim=1)
            full_mask = torch.cat([full_mask, full_mask.new_ones(full_mask.shape[0], 1)], dim=1)
            step_positions = step_positions + 1
            if compact and should_compact(unfinished, max_new_tokens - steps):
                keep = unfinished.nonzero().squeeze(1)
                cache.batch_select_indices(keep)
                if state is not None:
                    state.select(keep)
                full_ids, full_mask, step_positions = full_ids[keep], full_mask[keep], step_positions[keep]
                token, unfinished, alive = token[keep], unfinished[keep], alive[keep]
            out = model(
                input_ids=token[:, None], attention_mask=full_mask, position_ids=step_positions, cache=cache,
                use_cache=True, logits_to_keep=1,
            )  # fmt: skip
    return result[:, :steps]


@contextlib.contextmanager
def contiguous_head_input(model):
    """The lm_head's input as one contiguous 2-D matrix while generating (`scans.models.loading.flat_head_input`):
    with `logits_to_keep=1` the head gets a strided (B, 1, d) slice of the hidden states, in any precision."""
    head = model.get_output_embeddings()
    handles = [] if head is None else flat_head_input(head)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def penalise_repeats_(scores: torch.Tensor, ids: torch.Tensor, penalty: float) -> None:
    """transformers' `RepetitionPenaltyLogitsProcessor`, in place: every token of a row's ids has its score divided
    by the penalty (multiplied where negative). The library's processor pads and scatters a fresh copy of the
    (B, vocab) scores at every step, a fifth of a decoding step at batch 128 on a CPU; ids beyond the scores'
    vocabulary are skipped, as there."""
    vocab = scores.shape[-1]
    if int(ids.max()) >= vocab:  # an embedding vocabulary larger than the lm_head's: the library's way
        scores.copy_(RepetitionPenaltyLogitsProcessor(penalty)(ids, scores))
        return
    score = scores.gather(1, ids)
    scores.scatter_(1, ids, torch.where(score < 0, score * penalty, score / penalty))


def should_compact(unfinished: torch.Tensor, steps_left: int) -> bool:
    """Drop the finished rows once they are a quarter of the batch and enough steps remain to repay the copy of
    the cache (about two decoding steps' time)."""
    done = int((~unfinished).sum())
    return done * 4 >= unfinished.numel() and done * steps_left >= 2 * unfinished.numel()
