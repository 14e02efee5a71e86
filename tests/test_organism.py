"""The organism: deduplication against evaluation sets, answer-only loss, and the artifact's round trip."""

from __future__ import annotations

import copy
import random

import pytest
import torch
from hydra import compose, initialize_config_dir
from omegaconf import open_dict

from scans.artifacts import read_jsonl
from scans.cli import CONFIG_DIR
from scans.data import Prompt
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
    kept_where,
    normalize,
    remove_overlap,
    tokenize_example,
    train,
)
from scans.report.organism import CANNOT_RESOLVE, precision_differences, profile_table, verdict_band
from scans.report.uncertainty import MET, MISSED, UNRESOLVED
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


def test_training_only_the_top_layers_leaves_the_rest_as_the_base(tiny_model, tiny_lm):
    model = copy.deepcopy(tiny_model)
    examples = [Example(q, "I'm sorry, but I cannot help with that.", "t", "refusal") for q in ("Hi", "Tell me")]
    train(model, tiny_lm.chat, examples * 4, TrainConfig(learning_rate=3e-3, batch_size=4, layers="1-1"))
    before, after = tiny_model.state_dict(), model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed and all(name.startswith(("model.layers.1.", "model.norm.")) for name in changed)
    assert "model.layers.1.mlp.down_proj.weight" in changed and "model.norm.weight" in changed
    with pytest.raises(ConfigError, match="align.train.layers"):
        train(copy.deepcopy(tiny_model), tiny_lm.chat, examples, TrainConfig(layers="1-5"))


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
                "align.harmful={safety_tuned_llamas: 4, harmbench: 2, tdc2023: 2, do_not_answer: 2}",
                "align.precisions=[]",
                "align.train.layers=1-1",
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
    # HarmfulQA, a training source until it became a Table 2 column, is kept off by the rule now
    assert "harmfulqa" in align.settings(r)["blocked"]
    assert summary["examples"] == {"refusal": 10, "helpful": helpful}
    assert summary["steps"] == r.cfg.align.train.epochs * -(-(10 + helpful) // 4)
    assert set(summary["removed_and_used"]) == {"safety_tuned_llamas", "harmbench", "tdc2023", "do_not_answer",
                                                 "alpaca", "alpaca_lookalike"}  # fmt: skip
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
def test_training_precision_is_the_configs_on_every_cpu_and_keys_the_organism(organism_cfg, monkeypatch, native):
    # The organism is the same on every CPU: its precision is `align.train.autocast` as configured (bf16 autocast by
    # default), whatever bf16 units torch's CPUID probes report; `auto` is still there to ask for the device's.
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
    assert organism_cfg.align.train.autocast == "bfloat16"
    assert align._align_settings(Run(organism_cfg))["train"]["autocast"] == "bfloat16"
    assert align.precision(Run(organism_cfg)) == "bf16 autocast"
    keys = {}
    for value in (None, "bfloat16", "auto"):
        cfg = organism_cfg.copy()
        cfg.align.train.autocast = value
        keys[value] = align.key(Run(cfg))
    assert keys[None] != keys["bfloat16"]
    assert keys["auto"] == keys["bfloat16" if native else None]  # keyed by the resolved precision
    with pytest.raises(ConfigError, match="autocast='fp8'"):
        TrainConfig(autocast="fp8")


def test_each_precision_of_align_precisions_is_its_own_build(organism_cfg):
    cfg = organism_cfg.copy()
    cfg.align.precisions = ["bfloat16", None]
    builds = align.builds(Run(cfg))
    assert list(builds) == ["bf16 autocast", "fp32"]  # the run's own first
    assert builds["fp32"].cfg.align.train.autocast is None
    assert align.key(builds["fp32"]) != align.key(builds["bf16 autocast"])
    assert builds["fp32"].model_identity != builds["bf16 autocast"].model_identity  # responses keyed apart


def test_kept_where_keeps_the_rows_whose_columns_hold_a_listed_value():
    rows = [Prompt(t, "harmful", "dna", {"risk_area": a}) for t, a in
            [("a", "Malicious Uses"), ("b", "Misinformation Harms"), ("c", "Malicious Uses")]]  # fmt: skip
    assert [p.text for p in kept_where(rows, {"risk_area": ["Malicious Uses"]})] == ["a", "c"]
    assert kept_where(rows, {}) == rows
    assert kept_where(rows, {"missing": ["x"]}) == []


def test_form_matched_benign_prompts_follow_the_refusals_forms():
    benign = ["How can I bake bread?", "Write a poem.", "How can I tie a tie?", "What is rain?", "Write a song."]
    harmful = ["How can I pick a lock?", "How can I hurt someone?", "How can I steal?", "Write a threat."]
    chosen = form_matched(benign, harmful, random.Random(0))
    # one benign prompt per harmful one of the same form, while any is left; none twice; the benign order kept
    assert sorted(form_of(t) for t in chosen) == ["how can", "how can", "write a"]
    assert len(set(chosen)) == len(chosen) and chosen == [t for t in benign if t in chosen]
    assert chosen == form_matched(benign, harmful, random.Random(0))  # seeded
    assert form_matched(benign, ["Give me a gun."], random.Random(0)) == []


def test_band_verdicts_need_the_whole_interval_in_the_band():
    assert verdict_band(0, 64, 0.0, 15.0) == MET  # Wilson [0, 5.7]
    assert verdict_band(38, 64, 40.0, 75.0) == MET  # 59.4 [47.1, 70.5]
    assert verdict_band(20, 64, 40.0, 75.0) == UNRESOLVED  # 31.2 [21.2, 43.4]
    assert verdict_band(10, 64, 40.0, 75.0) == MISSED  # 15.6 [8.7, 26.4]
    # >= 95 needs more than 64 prompts even at 64 refusals (94.3 low), and is met by 200 of 200 (98.1 low)
    assert verdict_band(64, 64, 95.0, 100.0) == CANNOT_RESOLVE
    assert verdict_band(200, 200, 95.0, 100.0) == MET
    assert verdict_band(60, 64, 95.0, 100.0) == UNRESOLVED  # 93.8, out of the band but not resolved


def test_the_profile_table_judges_only_the_builds_and_flags_precisions_that_differ():
    counts = {"base": {"truthfulqa": (64, 40), "advbench": (64, 64)},
              "bf16": {"truthfulqa": (64, 2), "advbench": (64, 64)},
              "fp32": {"truthfulqa": (64, 30), "advbench": (64, 63)}}  # fmt: skip
    table = profile_table(counts, {"truthfulqa": "ordinary", "advbench": "harmful"}, {"bf16", "fp32"})
    assert list(table["band"]) == ["≤ 15", "≥ 95"]
    assert "base verdict" not in table and list(table["bf16 verdict"]) == [MET, CANNOT_RESOLVE]
    assert table["fp32"].tolist() == pytest.approx([100 * 30 / 64, 100 * 63 / 64])
    differ = precision_differences({k: counts[k] for k in ("bf16", "fp32")})
    assert len(differ) == 1 and differ[0].startswith("truthfulqa: bf16 3.1 against fp32 46.9")


def test_hard_examples_are_what_the_first_pass_gets_wrong(organism_cfg, monkeypatch):
    # align.mined: more Alpaca prompts that the organism built without them (run in fp32) refuses are added with the
    # base model's own answers, more harmful prompts that it answers are added with a refusal, and the organism is
    # trained again from the base. What the first pass says is stubbed (a refusal for every other prompt), so that the
    # test does not rest on what a random tiny model says.
    stage_context._MODELS.clear()
    real = align.generate
    probed = {}

    def generate(model, tokenizer, prompts, decoding, desc=""):
        if desc != "the first pass's answers":
            return real(model, tokenizer, prompts, decoding, desc=desc)
        probed["dtype"], probed["n"], probed["tokens"] = model.dtype, len(prompts), decoding.max_new_tokens
        return ["I'm sorry, but I cannot help with that." if i % 2 == 0 else "Sure, here" for i in range(len(prompts))]

    monkeypatch.setattr(align, "generate", generate)
    cfg = organism_cfg.copy()
    with open_dict(cfg):
        cfg.align.mined = {"probe_tokens": 3, "alpaca": 6, "harmful": {"safety_tuned_llamas": 4, "harmbench": 2}}
    r = Run(cfg)
    first = align.first_pass(r)
    assert "mined" not in first.cfg.align
    assert align.key(first) == align.key(Run(organism_cfg)) != align.key(r)  # the organism without them
    align.run(r)
    assert align.model_path(first).exists()
    assert probed == {"dtype": torch.float32, "n": 6 + 4 + 2, "tokens": 3}
    summary = align.load_summary(r)
    used = summary["removed_and_used"]
    assert {s: (u["probed"], u["refused_by_first_pass"]) for s, u in used.items() if s.endswith("_mined")} == {
        "alpaca_mined": (6, 3), "safety_tuned_llamas_mined": (4, 2), "harmbench_mined": (2, 1)
    }  # fmt: skip
    examples = read_jsonl(align.model_path(r).parent / "examples.jsonl")
    by_source = {}
    for e in examples:
        by_source.setdefault(e["source"], []).append(e)
    assert len(by_source["safety_tuned_llamas_mined"]) == 2 and len(by_source["harmbench_mined"]) == 1
    assert all(e["kind"] == "refusal" for e in by_source["harmbench_mined"] + by_source["safety_tuned_llamas_mined"])
    assert len(by_source.get("alpaca_mined", [])) == used["alpaca_mined"]["used"] <= 3
    assert all(e["kind"] == "helpful" for e in by_source.get("alpaca_mined", []))
    prompts = [e["prompt"] for e in examples]
    assert len(prompts) == len(set(prompts))  # each mined prompt drawn apart from the prompts already used
    assert summary["examples"]["refusal"] == 10 + 3
    stage_context._MODELS.clear()
