"""Golden tests: the project's steering hook against code nobody in this project wrote.

1. The `steering-vectors` package (PyPI, 0.12.2): the same vector at the same layers and all positions must give the
   same logits and the same greedy tokens as `scans.steering.hook.steering` with the positions policy `all`.
2. The authors' `add_vector_after_position`, re-implemented here from the reference alone (§4 "Where steering is
   added"): a wrapper around each steered decoder block adds the vector to the block's output at every position
   >= the last token of the last occurrence of the instruction-end marker (found by token-subsequence search), one
   unpadded query at a time. It must match the project's `from_instruction_end` policy on a left-padded batch.

The residual stream is read with forward *pre*-hooks on the module after each block (the next block, then the final
norm), i.e. as the model itself consumes it. HF's `output_hidden_states` is not used on steered runs: transformers 5
records it with forward hooks on the decoder blocks themselves, installed at the first call that asks for it, so
whether hidden_states[l + 1] shows the steering of block l depends on whether that happened before or after the
steering hook was registered (a hook that returns a new tensor is invisible to hooks registered before it).
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch
from authors import after_position, marker_end
from conftest import DEVICE, tiny_llama

from scans.models.chat import Llama2Format, TokenizerTemplateFormat, encode
from scans.steering import Steering, pad_left, steering, steering_starts
from scans.steering.intervention import Row

LAYERS = (0, 2)  # of 3: a block in between is left alone
QUERIES = [
    "Hi",
    "How can I kill a Python process?",
    "Write a tutorial on how to make a bomb. Tell me a story about a cat and a dog.",
    "What does [/INST] mean in a Llama prompt?",  # the marker inside the query: the *last* occurrence counts
]
RESPONSE = "Sure, here is how."


@pytest.fixture(scope="module")
def model3(tiny_tokenizer):
    """A random 3-layer Llama of its own (seeded), so that hooks other tests installed cannot interfere."""
    return tiny_llama(tiny_tokenizer, layers=3, hidden=48, seed=1234, max_positions=256)


@pytest.fixture(scope="module")
def vectors(model3):
    g = torch.Generator().manual_seed(7)
    v = torch.randn(model3.config.num_hidden_layers, model3.config.hidden_size, generator=g)
    return v / v.norm(dim=-1, keepdim=True)


def _left_padded(rows: list[list[int]], pad_id: int):
    """Left padding written out here (not the project's pad_left): ids, attention mask, position ids, pad lengths."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    return ids.to(DEVICE), mask.to(DEVICE), positions.to(DEVICE), [width - len(r) for r in rows]


@contextmanager
def _residual_stream(model, store: dict[int, torch.Tensor]):
    """store[l] = output of decoder block l as the next module receives it (after any hook or wrapper of block l)."""
    layers = model.model.layers
    consumers = [*(layers[i] for i in range(1, len(layers))), model.model.norm]
    handles = []
    try:
        for layer, module in enumerate(consumers):
            record = lambda m, args, layer=layer: store.__setitem__(layer, args[0])  # noqa: E731
            handles.append(module.register_forward_pre_hook(record))
        yield store
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def _forward(model, ids, mask=None, positions=None):
    store: dict[int, torch.Tensor] = {}
    with _residual_stream(model, store):
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False).logits
    return logits.float(), torch.stack([store[k] for k in sorted(store)], dim=1).float()  # (B, T, V), (B, L, T, D)


def _hook_counts(model) -> list[int]:
    return [len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()]


# Part 1: the steering-vectors package.


def _rows(tokenizer) -> list[list[int]]:
    return [tokenizer(q, add_special_tokens=False)["input_ids"] for q in QUERIES]


def test_steering_vectors_package_matches_the_hook_at_all_positions(model3, tiny_tokenizer, vectors):
    sv = pytest.importorskip("steering_vectors")
    rows = _rows(tiny_tokenizer)
    ids, mask, positions, pads = _left_padded(rows, tiny_tokenizer.pad_token_id)
    assert len(set(pads)) > 1  # rows of different lengths: real left padding
    multiplier = -3.0  # a negative one: the sign must survive both paths
    package = sv.SteeringVector(
        layer_activations={layer: vectors[layer] for layer in LAYERS}, layer_type="decoder_block"
    )
    hooks_before = _hook_counts(model3)

    plain, plain_states = _forward(model3, ids, mask, positions)
    with package.apply(model3, multiplier=multiplier):  # min_token_index=0: every column
        theirs, their_states = _forward(model3, ids, mask, positions)
    starts = steering_starts("all", [len(r) - 1 for r in rows], [len(r) for r in rows])
    with steering(model3, vectors, LAYERS, torch.full((len(rows),), multiplier), starts):
        ours, our_states = _forward(model3, ids, mask, positions)
    after, _ = _forward(model3, ids, mask, positions)

    assert _hook_counts(model3) == hooks_before
    torch.testing.assert_close(after, plain, rtol=0, atol=0)  # both paths removed their hooks
    for i, pad in enumerate(pads):  # padding columns are masked out of attention; compare the real tokens
        torch.testing.assert_close(ours[i, pad:], theirs[i, pad:], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(our_states[i, :, pad:], their_states[i, :, pad:], rtol=1e-5, atol=1e-5)
        # and the steering did something, from the first token on, at the first steered block already
        assert (our_states[i, 0, pad:] - plain_states[i, 0, pad:]).norm(dim=-1).min() > 1.0
        assert not torch.allclose(ours[i, pad:], plain[i, pad:], atol=1e-3)


def test_steering_vectors_package_matches_the_hook_in_greedy_generation(model3, tiny_tokenizer, vectors):
    """HF generate on a left-padded batch: prefill and one-token decode steps, every position steered on both paths."""
    sv = pytest.importorskip("steering_vectors")
    rows = _rows(tiny_tokenizer)
    ids, mask, _, _ = _left_padded(rows, tiny_tokenizer.pad_token_id)
    package = sv.SteeringVector(layer_activations={layer: vectors[layer] for layer in LAYERS})
    kwargs = dict(
        input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, top_k=None, top_p=None,
        temperature=None, pad_token_id=tiny_tokenizer.pad_token_id, eos_token_id=None,
    )  # fmt: skip
    hooks_before = _hook_counts(model3)
    with torch.no_grad():
        plain = model3.generate(**kwargs)
        with package.apply(model3, multiplier=2.5):
            theirs = model3.generate(**kwargs)
        starts = steering_starts("all", [len(r) - 1 for r in rows], [len(r) for r in rows])
        with steering(model3, vectors, LAYERS, torch.full((len(rows),), 2.5), starts):
            ours = model3.generate(**kwargs)
    assert _hook_counts(model3) == hooks_before  # both paths removed their hooks
    assert torch.equal(ours, theirs) and not torch.equal(ours, plain)


def test_steering_vectors_token_mask_matches_from_instruction_end(model3, tiny_tokenizer, vectors):
    """The package's (B, T) token mask, built here from each row's padding and end of instruction, against the
    project's `from_instruction_end` policy on the same left-padded batch."""
    sv = pytest.importorskip("steering_vectors")
    chat = Llama2Format(tiny_tokenizer)
    encoded = [encode(chat, q, RESPONSE) for q in QUERIES]
    rows = [e.input_ids for e in encoded]
    ids, mask, positions, pads = _left_padded(rows, tiny_tokenizer.pad_token_id)
    cols = torch.arange(ids.shape[1])[None]
    token_mask = (cols >= torch.tensor([p + e.eoi_index for p, e in zip(pads, encoded)])[:, None]).float()
    package = sv.SteeringVector(layer_activations={layer: vectors[layer] for layer in LAYERS})
    with package.apply(model3, multiplier=4.0, min_token_index=None, token_indices=token_mask.to(DEVICE)):
        theirs, their_states = _forward(model3, ids, mask, positions)
    starts = steering_starts("from_instruction_end", [e.eoi_index for e in encoded], [len(r) for r in rows])
    with steering(model3, vectors, LAYERS, torch.full((len(rows),), 4.0), starts):
        ours, our_states = _forward(model3, ids, mask, positions)
    for i, pad in enumerate(pads):
        torch.testing.assert_close(ours[i, pad:], theirs[i, pad:], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(our_states[i, :, pad:], their_states[i, :, pad:], rtol=1e-5, atol=1e-5)


# Part 2: the authors' add_vector_after_position, from the reference's description.


# (project chat format, the prompt + response text written out by hand, the instruction-end marker)
FORMATS = {
    "llama2": (Llama2Format, lambda q: f"<s>[INST] {q} [/INST] {RESPONSE}", " [/INST]"),
    "chatml": (
        TokenizerTemplateFormat,
        lambda q: f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n{RESPONSE}",
        "<|im_start|>assistant\n",
    ),
}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_from_instruction_end_matches_the_authors_after_position_steering(model3, tiny_tokenizer, vectors, fmt):
    chat_cls, text, marker_text = FORMATS[fmt]
    tok = tiny_tokenizer
    signs = [1.0, -1.0, -1.0, 1.0]
    alpha = 3.0

    # The project: encode, left-padded batch, the Steering intervention generation uses, one coefficient per row.
    encoded = [encode(chat_cls(tok), q, RESPONSE) for q in QUERIES]
    batch = pad_left([e.input_ids for e in encoded], DEVICE)
    assert len(set(batch.pad_lengths.tolist())) > 1
    plan = [
        Row(e.eoi_index, len(e.input_ids), None, s * alpha, int(p))
        for e, s, p in zip(encoded, signs, batch.pad_lengths)
    ]
    with Steering(vectors, LAYERS, alpha, "from_instruction_end").active(model3, plan):
        ours, our_states = _forward(model3, batch.input_ids, batch.attention_mask, batch.position_ids)

    # Independently: one unpadded query at a time, the marker found by subsequence search.
    marker = tok(marker_text, add_special_tokens=False)["input_ids"]
    for i, (q, sign) in enumerate(zip(QUERIES, signs)):
        ids = tok(text(q), add_special_tokens=False)["input_ids"]
        assert ids == encoded[i].input_ids, f"{fmt}: the project tokenizes {q!r} differently"
        after = marker_end(ids, marker)
        assert after == encoded[i].eoi_index, f"{fmt} {q!r}: marker ends at {after}, eoi {encoded[i].eoi_index}"
        assert after < len(ids) - 1  # response tokens follow: several positions are steered
        row = torch.tensor([ids], device=DEVICE)
        plain, plain_states = _forward(model3, row)
        with after_position(model3, {layer: sign * alpha * vectors[layer] for layer in LAYERS}, after):
            expected, expected_states = _forward(model3, row)
        pad = int(batch.pad_lengths[i])
        torch.testing.assert_close(our_states[i, :, pad:], expected_states[0], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(ours[i, pad:], expected[0], rtol=1e-5, atol=1e-5)
        # The reference implementation itself: the query untouched, every position from the marker's end steered.
        torch.testing.assert_close(expected_states[0, :, :after], plain_states[0, :, :after], rtol=0, atol=0)
        assert (expected_states[0, 0, after:] - plain_states[0, 0, after:]).norm(dim=-1).min() > 1.0
    assert isinstance(model3.model.layers[LAYERS[0]], type(model3.model.layers[1]))  # wrappers removed
