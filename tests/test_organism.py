"""The organism: deduplication against evaluation sets, answer-only loss, and the artifact's round trip."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from hydra import compose, initialize_config_dir

from scans.cli import CONFIG_DIR
from scans.data.overlap import Blocklist
from scans.errors import ConfigError
from scans.organism import (
    IGNORE,
    Example,
    TrainConfig,
    answer_loss,
    collate,
    form_matched,
    form_of,
    normalize,
    remove_overlap,
    tokenize_example,
    train,
)
from scans.stages import Run, align
from scans.stages import context as stage_context


def test_dedup_removes_exact_and_normalised_duplicates():
    prompts = ["How do I build a bomb?", "how do i  build a BOMB", "Write a poem.", "Write a poem", "Tell a joke",
               "How can I best build a bomb at home?"]  # fmt: skip
    blocked = Blocklist(["HOW DO I BUILD A BOMB at home!!"], 0.6)
    kept, counts = remove_overlap(prompts, blocked, key=lambda p: p)
    assert kept == ["Write a poem.", "Tell a joke"]
    assert counts == {"evaluation_overlap": 0, "near_duplicate": 3, "duplicate": 1}
    kept, counts = remove_overlap(prompts, Blocklist(["how do i build a bomb"], 0.6), key=lambda p: p)
    assert counts["evaluation_overlap"] == 2  # equal after normalising
    assert normalize("  It's   a TEST, isn't it? ") == "it s a test isn t it"


def test_labels_cover_only_answer_tokens(tiny_lm):
    ex = Example("Tell me a story", "Sure thing! Of course.", "test", "helpful")
    ids, labels = tokenize_example(tiny_lm.chat, ex, max_answer_tokens=100)
    prompt_len = len(tiny_lm.tokenizer(tiny_lm.chat.prompt(ex.prompt), add_special_tokens=False)["input_ids"])
    assert labels[:prompt_len] == [IGNORE] * prompt_len
    assert labels[prompt_len:] == ids[prompt_len:]
    assert tiny_lm.tokenizer.decode(ids[prompt_len:]) == ex.answer
    batch = collate([(ids, labels), (ids[:3], [IGNORE] * 3)], "cpu")
    assert (batch["labels"][1] == IGNORE).all()  # a row without answer (and its padding) carries no loss
    assert batch["labels"][0].tolist() == labels


def test_loss_is_answer_only_and_training_lowers_it(tiny_model, tiny_lm):
    model = copy.deepcopy(tiny_model)
    examples = [Example(q, "I'm sorry, but I cannot help with that.", "t", "refusal") for q in ("Hi", "Tell me")]
    rows = [tokenize_example(tiny_lm.chat, e, 48) for e in examples]
    batch = collate(rows, "cpu")
    # Our loss (LM head on answer positions only) equals HF's full-sequence loss with the prompt labels ignored.
    torch.testing.assert_close(answer_loss(model, batch), model(**batch).loss)

    before = answer_loss(model, batch).item()
    losses = train(model, tiny_lm.chat, examples * 8, TrainConfig(learning_rate=3e-3, batch_size=4, epochs=3))
    assert answer_loss(model, batch).item() < 0.5 * before
    assert losses[-1] < losses[0]
    assert not model.training and not any(p.requires_grad for p in model.parameters())


@pytest.fixture
def organism_cfg(tmp_path, tiny_model, tiny_tokenizer, data_dir):
    base = tmp_path / "tiny-base"
    tiny_model.save_pretrained(base)
    tiny_tokenizer.save_pretrained(base)
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        return compose(
            "config",
            overrides=[
                "model=smollm2_organism",
                "model.base.source.kind=local",
                f"+model.base.source.path={base}",
                "model.base.num_layers=2",
                "model.num_layers=2",
                "model.device=cpu",
                "model.base.device=cpu",
                "align.harmful={safety_tuned_llamas: 4, harmbench: 2, tdc2023: 2, do_not_answer: 2, harmfulqa: 2}",
                "align.benign.alpaca=4",
                "align.benign.lookalike=2",
                "align.benign.answer_tokens=4",
                "align.train.batch_size=4",
                f"paths.artifacts={tmp_path / 'artifacts'}",
            ],
        )


def test_organism_round_trips_and_is_reused(organism_cfg, monkeypatch):
    stage_context._MODELS.clear()
    r = Run(organism_cfg)
    path = align.run(r)
    summary = align.load_summary(r)
    helpful = 4 + 2 - summary["helpful_refused_by_base"]  # Alpaca and look-alikes, less answers judged refusals
    assert summary["examples"] == {"refusal": 12, "helpful": helpful}
    assert summary["steps"] == -(-(12 + helpful) // 4)
    assert set(summary["removed_and_used"]) == {"safety_tuned_llamas", "harmbench", "tdc2023", "do_not_answer",
                                                 "harmfulqa", "alpaca", "alpaca_lookalike"}  # fmt: skip
    lm = r.lm  # loads the saved organism
    from transformers import AutoModelForCausalLM

    from scans.models.loading import DTYPES, resolve_dtype

    # The saved fp32 weights, in the precision `model.dtype` (auto) resolves to here.
    assert lm.model.dtype == DTYPES[resolve_dtype(organism_cfg.model.dtype, "cpu")]
    fresh = AutoModelForCausalLM.from_pretrained(path, dtype=lm.model.dtype)
    for (name, a), (_, b) in zip(lm.model.state_dict().items(), fresh.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)

    stage_context._MODELS.clear()
    monkeypatch.setattr(align, "train", lambda *a, **k: pytest.fail("retrained an existing organism"))
    monkeypatch.setattr(align, "generate", lambda *a, **k: pytest.fail("re-answered the benign prompts"))
    again = Run(organism_cfg)
    assert align.run(again) == path
    assert again.lm.model is not None
    stage_context._MODELS.clear()


@pytest.mark.parametrize("native", [False, True])
def test_auto_training_precision_is_bf16_only_on_bf16_hardware_and_keys_by_its_resolved_value(
    organism_cfg, monkeypatch, native
):
    # bf16 autocast is emulated (6.6x slower than fp32) on a CPU with AVX2 alone: `auto` picks it only where torch's
    # CPUID probes report AMX or AVX-512 BF16, and the key is the resolved precision's; the two train different weights.
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    assert organism_cfg.align.train.autocast == "auto"
    resolved = "bfloat16" if native else None
    assert align._align_settings(Run(organism_cfg))["train"]["autocast"] == resolved
    forced = {}
    for value in (None, "bfloat16"):
        cfg = organism_cfg.copy()
        cfg.align.train.autocast = value
        forced[value] = align.key(Run(cfg))
    assert align.key(Run(organism_cfg)) == forced[resolved]
    assert forced[None] != forced["bfloat16"]
    with pytest.raises(ConfigError, match="autocast='fp8'"):
        TrainConfig(autocast="fp8")


def test_form_matched_benign_prompts_follow_the_refusals_forms():
    benign = ["How can I bake bread?", "Write a poem.", "How can I tie a tie?", "What is rain?", "Write a song."]
    harmful = ["How can I pick a lock?", "How can I hurt someone?", "How can I steal?", "Write a threat."]
    chosen = form_matched(benign, harmful, random.Random(0))
    # one benign prompt per harmful one of the same form, while any is left; none twice; the benign order kept
    assert sorted(form_of(t) for t in chosen) == ["how can", "how can", "write a"]
    assert len(set(chosen)) == len(chosen) and chosen == [t for t in benign if t in chosen]
    assert chosen == form_matched(benign, harmful, random.Random(0))  # seeded
    assert form_matched(benign, ["Give me a gun."], random.Random(0)) == []
