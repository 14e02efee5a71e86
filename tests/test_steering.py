"""The steering library on a random 2-layer Llama: batching, positions, hooks, classifier."""

from __future__ import annotations

import pytest
import torch

from scans.models import encode
from scans.steering import (
    DecodingConfig,
    Steering,
    classify,
    generate,
    harm_reference,
    harm_similarity,
    hidden_states,
    pad_left,
    steer_sign,
    steering,
    steering_mask,
    steering_starts,
)

QUERIES = [
    "How can I kill a Python process?",
    "Write a tutorial on how to make a bomb",
    "Tell me a story",
    "What is the capital of France? Tell me about Paris and its history.",
    "Hi",
]


def _encoded(lm, response=None):
    return [encode(lm.chat, q, response) for q in QUERIES]


def _unit_vectors(model, seed=1):
    g = torch.Generator().manual_seed(seed)
    v = torch.randn(model.config.num_hidden_layers, model.config.hidden_size, generator=g)
    return v / v.norm(dim=-1, keepdim=True)


def test_pad_left_positions_match_unpadded_rows():
    batch = pad_left([[5, 6, 7], [8]])
    assert batch.attention_mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch.position_ids.tolist() == [[0, 1, 2], [0, 0, 0]]
    assert batch.input_ids.tolist() == [[5, 6, 7], [8, 8, 8]]  # padded with the row's own first token


def test_end_of_instruction_is_last_prompt_token(tiny_lm):
    enc = encode(tiny_lm.chat, "Hi", "Sure")
    prompt_only = encode(tiny_lm.chat, "Hi")
    assert enc.eoi_index == len(prompt_only.input_ids) - 1
    assert enc.input_ids[: enc.eoi_index + 1] == prompt_only.input_ids
    assert tiny_lm.tokenizer.decode(enc.input_ids[enc.eoi_index + 1 :]).strip() == "Sure"


def test_batched_hidden_states_match_one_by_one(tiny_lm):
    enc = _encoded(tiny_lm, "Sure")
    rows, pos = [e.input_ids for e in enc], [[e.eoi_index, -1] for e in enc]
    batched = hidden_states(tiny_lm.model, rows, pos, [0, 1], batch_size=8)
    single = torch.cat([hidden_states(tiny_lm.model, [r], [p], [0, 1], batch_size=1) for r, p in zip(rows, pos)])
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)


def test_batched_similarities_match_one_by_one(tiny_lm):
    ref = harm_reference(tiny_lm.model, tiny_lm.chat, QUERIES[:2], QUERIES[2:], batch_size=4)
    batched = classify(tiny_lm.model, tiny_lm.chat, QUERIES, ref.direction, batch_size=8).layer_similarities
    single = torch.cat(
        [classify(tiny_lm.model, tiny_lm.chat, [q], ref.direction, batch_size=1).layer_similarities for q in QUERIES]
    )
    torch.testing.assert_close(batched, single, atol=1e-5, rtol=1e-5)
    assert batched.shape == (len(QUERIES), 2)
    assert ((batched >= -1 - 1e-6) & (batched <= 1 + 1e-6)).all()


def test_refusal_vectors_are_unit_norm_and_harm_similarity_of_anchor_is_high(tiny_lm):
    ref = harm_reference(tiny_lm.model, tiny_lm.chat, QUERIES[:2], QUERIES[2:], batch_size=4)
    torch.testing.assert_close(ref.vectors.norm(dim=-1), torch.ones(2))
    raw = harm_reference(tiny_lm.model, tiny_lm.chat, QUERIES[:2], QUERIES[2:], normalize=False)
    torch.testing.assert_close(raw.vectors.norm(dim=-1), ref.raw_vector_norms)
    # A single harmful anchor's transition is the harm direction itself: cosine 1 in every layer.
    one = harm_reference(tiny_lm.model, tiny_lm.chat, QUERIES[:1], QUERIES[2:])
    sims = classify(tiny_lm.model, tiny_lm.chat, QUERIES[:1], one.direction).layer_similarities
    torch.testing.assert_close(sims, torch.ones(1, 2), atol=1e-5, rtol=1e-5)


def test_steer_sign_follows_threshold():
    sims = torch.tensor([[0.1, 0.2], [0.9, 0.8], [0.75, 0.75]])
    s = harm_similarity(sims, [0, 1])
    assert steer_sign(s, 0.75).tolist() == [-1.0, 1.0, 1.0]


def test_steering_mask_under_left_padding_and_decode_steps():
    batch = pad_left([[1, 2, 3, 4], [1, 2]])
    starts = steering_starts("from_instruction_end", eoi_index=[3, 1], prompt_length=[4, 2])
    mask = steering_mask(batch.position_ids, starts)
    # Row 1 is padded by two columns; its real tokens are at columns 2-3 and the eoi token at column 3.
    assert mask.tolist() == [[False, False, False, True], [False, False, False, True]]
    # A one-token decode step: position ids are the next index of each unpadded row.
    step = torch.tensor([[4], [2]])
    assert steering_mask(step, starts).tolist() == [[True], [True]]
    generated = steering_starts("generated", [3, 1], [4, 2])
    assert steering_mask(batch.position_ids, generated).any().item() is False
    assert steering_mask(step, generated).tolist() == [[True], [True]]
    assert steering_mask(batch.position_ids, steering_starts("all", [3, 1], [4, 2])).all().item() is True


def _logits(model, batch):
    return model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, position_ids=batch.position_ids).logits


def test_steering_changes_only_positions_from_instruction_end(tiny_lm):
    assert_steering_only_from_instruction_end(tiny_lm, _encoded(tiny_lm, "Sure"))


def assert_steering_only_from_instruction_end(lm, enc) -> None:
    """Steering rows of different lengths, left-padded, changes the logits at and after each row's end of
    instruction and nowhere before it (nor on padding)."""
    batch = pad_left([e.input_ids for e in enc])
    plain = _logits(lm.model, batch)
    starts = steering_starts("from_instruction_end", [e.eoi_index for e in enc], [len(e.input_ids) for e in enc])
    signs = torch.tensor([(-1.0) ** i for i in range(len(enc))])
    with steering(lm.model, _unit_vectors(lm.model) * 4, [0], signs, starts):
        steered = _logits(lm.model, batch)
    changed = (steered - plain).abs().amax(-1) > 1e-4  # (B, T)
    expected = steering_mask(batch.position_ids, starts) & batch.attention_mask.bool()
    assert torch.equal(changed & batch.attention_mask.bool(), expected)


def test_per_row_sign_equals_steering_each_row_alone(tiny_lm):
    enc = _encoded(tiny_lm)
    decoding = DecodingConfig(max_new_tokens=6, batch_size=8)
    spec = Steering(_unit_vectors(tiny_lm.model) * 3, [0, 1], alpha=2.0)
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0, -1.0])
    batched = generate(tiny_lm.model, tiny_lm.tokenizer, enc, decoding, spec, signs)
    single = [
        generate(tiny_lm.model, tiny_lm.tokenizer, [e], DecodingConfig(6, batch_size=1), spec, signs[i : i + 1])[0]
        for i, e in enumerate(enc)
    ]
    assert batched == single


def test_batched_generation_matches_one_by_one(tiny_lm):
    enc = _encoded(tiny_lm)
    batched = generate(tiny_lm.model, tiny_lm.tokenizer, enc, DecodingConfig(max_new_tokens=8, batch_size=8))
    single = [generate(tiny_lm.model, tiny_lm.tokenizer, [e], DecodingConfig(8, batch_size=1))[0] for e in enc]
    assert batched == single


def test_zero_alpha_equals_unsteered(tiny_lm):
    enc = _encoded(tiny_lm)
    decoding = DecodingConfig(max_new_tokens=6)
    plain = generate(tiny_lm.model, tiny_lm.tokenizer, enc, decoding)
    zero = generate(
        tiny_lm.model, tiny_lm.tokenizer, enc, decoding, Steering(_unit_vectors(tiny_lm.model), [0, 1], 0.0)
    )
    strong = generate(
        tiny_lm.model, tiny_lm.tokenizer, enc, decoding, Steering(_unit_vectors(tiny_lm.model) * 50, [0, 1], 1.0)
    )
    assert zero == plain
    assert strong != plain


def test_hooks_are_removed_after_exception(tiny_lm):
    layers = tiny_lm.layers
    enc = _encoded(tiny_lm)[:2]

    def boom(*args, **kwargs):
        raise RuntimeError("boom")

    spec = Steering(_unit_vectors(tiny_lm.model), [0, 1], 1.0)
    original = tiny_lm.model.generate
    tiny_lm.model.generate = boom
    try:
        with pytest.raises(RuntimeError, match="boom"):
            generate(tiny_lm.model, tiny_lm.tokenizer, enc, DecodingConfig(4, engine="hf"), spec)
    finally:
        del tiny_lm.model.generate
    assert tiny_lm.model.generate == original
    assert all(len(layer._forward_hooks) == 0 for layer in layers)
    # An exception raised inside the forward pass itself, mid-generation.
    handle = layers[1].register_forward_hook(lambda *a: boom())
    try:
        with pytest.raises(RuntimeError, match="boom"):
            generate(tiny_lm.model, tiny_lm.tokenizer, enc, DecodingConfig(4), spec)
    finally:
        handle.remove()
    assert all(len(layer._forward_hooks) == 0 for layer in layers)
