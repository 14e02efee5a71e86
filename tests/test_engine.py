"""The generation engine (scans/steering/engine.py) against transformers' own `generate` on the same batches."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from conftest import DEVICE
from test_methods import QUERIES, _interventions

from scans.models import encode
from scans.steering import DecodingConfig, Steering, generate
from scans.steering import engine as engine_lib
from scans.steering.engine import common_prefix
from scans.steering.intervention import Row

KINDS = ["default", "steering", "insertion", "self_cd", "safedecoding", "soft_prompt", "ablation"]


def _both(lm, enc, dec, **kwargs) -> tuple[list[str], list[str]]:
    hf = generate(lm.model, lm.tokenizer, enc, dataclasses.replace(dec, engine="hf"), **kwargs)
    return generate(lm.model, lm.tokenizer, enc, dec, **kwargs), hf


@pytest.mark.parametrize("kind", KINDS)
def test_engine_equals_hf_generate_for_every_intervention(tiny_lm, kind):
    """Greedy outputs of the engine (shared prefix, preallocated cache, its own loop) equal HF `generate`'s on the
    same batch, through every intervention of Table 2, with the repetition penalty and `min_new_tokens`."""
    iv, coefs = _interventions(tiny_lm)[kind]
    enc = [encode(tiny_lm.chat, q) for q in QUERIES]
    for dec in (DecodingConfig(8, 1.1, 4), DecodingConfig(6, 1.3, 8, min_new_tokens=6)):
        ours, hf = _both(tiny_lm, enc, dec, intervention=iv, coefficients=coefs)
        assert ours == hf


@pytest.mark.parametrize("positions", ["from_instruction_end", "all", "generated"])
def test_the_shared_prefix_stops_where_steering_starts(tiny_lm, positions, monkeypatch):
    """The common prefix is run once, on one row, and only where the intervention leaves it as it is: with steering
    from the instruction's end it is the chat template's opening, with `all` nothing."""
    prefixes = []
    original = engine_lib.PrefixCache.batch

    def record(self, ids, rows, capacity, device):
        prefixes.append(len(ids))
        return original(self, ids, rows, capacity, device)

    monkeypatch.setattr(engine_lib.PrefixCache, "batch", record)
    g = torch.Generator().manual_seed(3)
    spec = Steering(torch.randn(2, tiny_lm.model.config.hidden_size, generator=g), [0, 1], 4.0, positions)
    enc = [encode(tiny_lm.chat, q) for q in QUERIES]
    signs = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0])
    ours, hf = _both(tiny_lm, enc, DecodingConfig(6, 1.1, 8), steer=spec, signs=signs)
    assert ours == hf
    shared = common_prefix([e.input_ids for e in enc])
    assert shared > 0 and shared <= min(e.query_start for e in enc)
    expected = {"from_instruction_end": shared, "all": 0, "generated": shared}[positions]
    assert prefixes == [expected]


@pytest.mark.parametrize("kind", ["steering", "self_cd"])
def test_rows_that_finish_early_leave_the_batch_and_the_rest_still_match(tiny_lm, kind, monkeypatch):
    """With a token that ends some rows after a few steps taken as EOS, the engine drops those rows mid-generation
    (the steering hook's rows follow; Self-CD's pairs leave together, its processor reading the survivors' halves)
    and every response still equals HF `generate`'s."""
    g = torch.Generator().manual_seed(5)
    queries = [*QUERIES, *(q + " Please." for q in QUERIES)]
    enc = [encode(tiny_lm.chat, q) for q in queries]
    if kind == "steering":
        iv = Steering(torch.randn(2, tiny_lm.model.config.hidden_size, generator=g), [0, 1], 2.0)
        coefs = torch.tensor([(-1.0) ** i for i in range(len(enc))]) * iv.alpha
    else:
        iv, coefs = _interventions(tiny_lm)["self_cd"]
    assert iv.compactable()
    dec = DecodingConfig(12, 1.1, len(enc))
    # The generated ids of every row, to pick a token that some rows produce early and others never.
    rows = iv.companions(enc) + enc
    c = [0.0 if coefs is None else float(coefs[j % len(enc)]) for j in range(len(rows))]
    plan = [Row(e.eoi_index, len(e.input_ids), e.query_start, c[j]) for j, e in enumerate(rows)]
    ids = engine_lib.decode_batch(
        tiny_lm.model, tiny_lm.tokenizer, [e.input_ids for e in rows], plan, iv, 12, 1.1, 0,
        engine_lib.PrefixCache(tiny_lm.model), DEVICE,
    ).tolist()[len(rows) - len(enc) :]  # fmt: skip
    counts: dict[int, int] = {}
    for row in ids:
        for t in set(row[1:6]):
            counts[t] = counts.get(t, 0) + 1
    eos = max((t for t, n in counts.items() if n < len(ids)), key=lambda t: counts[t])
    assert counts[eos] >= 3

    class Tokenizer:  # the tiny tokenizer, with that token as EOS
        eos_token_id, pad_token_id = eos, tiny_lm.tokenizer.pad_token_id
        decode = staticmethod(tiny_lm.tokenizer.decode)

    compactions = []
    original = engine_lib.should_compact

    def record(unfinished, steps_left):
        decided = original(unfinished, steps_left)
        compactions.append(decided)
        return decided

    monkeypatch.setattr(engine_lib, "should_compact", record)
    ours = generate(tiny_lm.model, Tokenizer, enc, dec, intervention=iv, coefficients=coefs)
    hf = generate(tiny_lm.model, Tokenizer, enc, dataclasses.replace(dec, engine="hf"), intervention=iv,
                  coefficients=coefs)  # fmt: skip
    assert ours == hf
    assert any(compactions)


def test_an_unknown_engine_is_a_config_error(tiny_lm):
    from scans.errors import ConfigError

    enc = [encode(tiny_lm.chat, QUERIES[0])]
    with pytest.raises(ConfigError, match="generation.engine"):
        generate(tiny_lm.model, tiny_lm.tokenizer, enc, DecodingConfig(2, engine="vllm"))


def test_steering_that_differs_only_in_alpha_is_generated_together():
    """SCANS rows that differ in α alone act alike given the per-row coefficients, so a grid over α shares one
    generation (`steer.respond_jobs`); other layers, positions or vectors do not, nor two other interventions."""
    from scans.steering.intervention import Intervention

    v = torch.randn(2, 8)
    assert Steering(v, [0, 1], 2.0).acts_like(Steering(v.clone(), [0, 1], 8.0))
    assert not Steering(v, [0, 1], 2.0).acts_like(Steering(v, [1], 2.0))
    assert not Steering(v, [0, 1], 2.0).acts_like(Steering(v + 1, [0, 1], 2.0))
    assert not Steering(v, [0, 1], 2.0).acts_like(Steering(v, [0, 1], 2.0, "all"))
    assert not Steering(v, [0, 1], 2.0).acts_like(Intervention()) and not Intervention().acts_like(Intervention())


@pytest.mark.parametrize("family", ["qwen2", "mistral_sliding"])
def test_engine_equals_hf_generate_on_other_families(tiny_tokenizer, family):
    """A Qwen2 model (the companion issue's family) takes the preallocated cache; a sliding-window model keeps
    transformers' own cache layers. Both equal HF `generate` with per-row steering."""
    from transformers import MistralConfig, MistralForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from scans.models import LoadedModel, make_chat_format
    from scans.steering.engine import batch_cache

    torch.manual_seed(0)
    shape = dict(vocab_size=len(tiny_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                 num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)  # fmt: skip
    if family == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(**shape))
    else:
        model = MistralForCausalLM(MistralConfig(**shape, sliding_window=6))
    model = model.eval().requires_grad_(False).to(DEVICE)
    lm = LoadedModel(family, model, tiny_tokenizer, make_chat_format("tokenizer", tiny_tokenizer))
    kinds = {type(layer).__name__ for layer in batch_cache(model, None, 2, 8, DEVICE).layers}
    assert kinds == ({"PreallocatedLayer"} if family == "qwen2" else {"DynamicSlidingWindowLayer"})
    g = torch.Generator().manual_seed(2)
    spec = Steering(torch.randn(2, 64, generator=g), [0, 1], 3.0)
    enc = [encode(lm.chat, q) for q in QUERIES]
    signs = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0])
    ours, hf = _both(lm, enc, DecodingConfig(10, 1.1, 8), steer=spec, signs=signs)
    assert ours == hf


@pytest.mark.parametrize("vocab_extra", [0, 3])
def test_the_in_place_repetition_penalty_is_transformers(vocab_extra):
    """`penalise_repeats_` gives transformers' RepetitionPenaltyLogitsProcessor's scores, repeated ids and negative
    scores included, also where some ids lie beyond the scores' vocabulary (an embedding larger than the head)."""
    from transformers.generation.logits_process import RepetitionPenaltyLogitsProcessor

    g = torch.Generator().manual_seed(0)
    scores = torch.randn(5, 50, generator=g)
    ids = torch.randint(0, 50 + vocab_extra, (5, 12), generator=g)
    ids[:, :3] = ids[:, 3:6]  # repeats
    expected = RepetitionPenaltyLogitsProcessor(1.3)(ids, scores.clone())
    ours = scores.clone()
    engine_lib.penalise_repeats_(ours, ids, 1.3)
    assert torch.equal(ours, expected)
    assert not torch.equal(ours, scores)


@pytest.mark.parametrize("rows", [1, 2])
def test_the_head_sees_one_contiguous_matrix_only_while_generating(tiny_lm, rows):
    """The prompt's pass hands the lm_head a strided (B, 1, d) slice, which `F.linear` may run as a batched matmul
    over a copy of the weight (one row: the shared prefix's pass). The engine's hooks give the head one contiguous
    (B, d) matrix and the logits back as (B, 1, vocab), the same numbers, and are gone afterwards."""
    head = tiny_lm.model.get_output_embeddings()
    seen = []
    probe = head.register_forward_hook(lambda _, args, out: seen.append((args[0].dim(), args[0].is_contiguous())))
    x = torch.tensor([[1, 2, 3, 4]], device=DEVICE).expand(rows, -1)
    try:
        with engine_lib.contiguous_head_input(tiny_lm.model):
            assert len(head._forward_pre_hooks) == 1 and len(head._forward_hooks) == 2
            ours = tiny_lm.model(input_ids=x, logits_to_keep=1).logits
        plain = tiny_lm.model(input_ids=x, logits_to_keep=1).logits
    finally:
        probe.remove()
    assert seen[0] == (2, True) and seen[1][0] == 3
    assert ours.shape == plain.shape == (rows, 1, head.out_features)
    torch.testing.assert_close(ours, plain)
    assert not head._forward_pre_hooks and not head._forward_hooks


def test_every_intervention_whose_rows_may_leave_can_be_told_which_remain(tiny_lm):
    """An intervention the engine may compact (drop finished rows from) yields from `active` either nothing or a
    state with `select(keep)`, which the engine calls at every compaction (DRO's soft prompt once yielded its hook,
    and Qwen's DRO row stopped at the first batch in which a row finished early)."""
    rows = [Row(3, 6, 1, 1.0), Row(3, 6, 1, -1.0)]
    compactable = [k for k, (iv, _) in _interventions(tiny_lm).items() if iv.compactable()]
    assert {"steering", "soft_prompt", "ablation"} <= set(compactable)
    for kind in compactable:
        iv, _ = _interventions(tiny_lm)[kind]
        with iv.active(tiny_lm.model, rows) as state:
            if state is not None:
                state.select(torch.tensor([1]))
