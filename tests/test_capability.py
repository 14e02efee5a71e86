"""Capability and cost (Tables 3 and 4): MMLU through lm-eval with per-row steering, XSum ROUGE, perplexity windows,
and the batched SCANS pipeline against the authors' one-prompt loop."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from scans.capability import cost, mmlu, perplexity, xsum
from scans.data import load_table
from scans.steering import DecodingConfig, Steering, steering


@pytest.fixture(scope="module")
def mmlu_table(data_dir):
    return load_table("mmlu")


@pytest.fixture(scope="module")
def items(mmlu_table, tiny_tokenizer):
    # One question from each of six subjects, 1-shot, short enough for the tiny model.
    subset = mmlu_table[mmlu_table["subject"].isin(sorted(mmlu.SUBCATEGORY)[:6])]
    return mmlu.questions(subset, tiny_tokenizer, shots=1, per_subject=1, seed=0, max_length=500)


@pytest.fixture()
def scans_lm(tiny_model, tiny_tokenizer):
    return mmlu.make_scans_lm(tiny_model, tiny_tokenizer, batch_size=4, max_length=500)


def test_mmlu_categories_match_the_reference_counts(mmlu_table):
    test = mmlu_table[mmlu_table["split"] == "test"]
    counts = test["subject"].map(mmlu.CATEGORY).value_counts().to_dict()
    # Reference §3.6: the question weights that make Table 3's Avg. the micro-average.
    assert counts == {"stem": 3018, "humanities": 4705, "social": 3077, "other": 3242}


def test_mmlu_prompt_is_the_hendrycks_format(mmlu_table, tiny_tokenizer):
    qs = mmlu.questions(mmlu_table, tiny_tokenizer, shots=5, per_subject=2, seed=0, max_length=100_000)
    assert len(qs) == 2 * 57
    q = qs[0]
    assert q.prompt.startswith("The following are multiple choice questions (with answers) about abstract algebra.\n\n")
    assert q.prompt.count("\nAnswer:") == 6 and q.prompt.endswith("\nD. " + q.prompt.split("\nD. ")[-1])
    assert q.prompt.endswith("Answer:") and q.shots == 5
    assert qs == mmlu.questions(mmlu_table, tiny_tokenizer, shots=5, per_subject=2, seed=0, max_length=100_000)
    short = mmlu.questions(mmlu_table, tiny_tokenizer, shots=5, per_subject=2, seed=0, max_length=400)
    assert all(len(tiny_tokenizer(s.prompt)["input_ids"]) <= 400 or s.shots == 0 for s in short)
    assert any(s.shots < 5 for s in short)


def test_answer_start_points_at_the_last_answer_marker(items, tiny_tokenizer):
    for q in items:
        ids = tiny_tokenizer(q.prompt, add_special_tokens=False)["input_ids"]
        start, bos = mmlu.answer_start(tiny_tokenizer, ids, q.prompt)
        assert tiny_tokenizer.decode(ids[start:]) == mmlu.ANSWER_MARK and bos == 0


def test_lm_eval_agrees_with_the_direct_argmax(scans_lm, items):
    assert mmlu.lm_eval_predictions(scans_lm, items) == mmlu.direct_predictions(scans_lm, items)


def _direct_steered_scores(lm, q, vectors, layers, coef):
    ctx, _ = lm._encode_pair(q.prompt, " A")
    letter_ids = [lm._encode_pair("Answer:", f" {x}")[1][0] for x in mmlu.LETTERS]
    start, _ = mmlu.answer_start(lm.tokenizer, ctx, q.prompt)
    with torch.no_grad(), steering(lm.model, vectors, layers, torch.tensor([coef]), torch.tensor([start])):
        logits = lm.model(torch.tensor([ctx])).logits[0, -1]
    return torch.log_softmax(logits.float(), -1)[letter_ids]


def test_lm_eval_steers_every_row_with_its_own_sign(scans_lm, items):
    torch.manual_seed(0)
    vectors = torch.randn(2, scans_lm.model.config.hidden_size)
    coefs = [8.0 if i % 2 else -8.0 for i in range(len(items))]  # mixed signs inside every batch
    scores = mmlu.lm_eval_scores(scans_lm, items, Steering(vectors, [0, 1], 1.0), coefs)
    for q, coef, row in zip(items, coefs, scores):
        assert torch.allclose(torch.tensor(row), _direct_steered_scores(scans_lm, q, vectors, [0, 1], coef), atol=1e-4)
    unsteered = mmlu.lm_eval_scores(scans_lm, items)
    assert not torch.allclose(torch.tensor(scores), torch.tensor(unsteered), atol=1e-3)
    assert scans_lm.intervention is None and not scans_lm.plan  # the plan is cleared afterwards


def test_accuracy_table_is_the_micro_average(items):
    preds = [q.answer if i % 2 == 0 else "Z" for i, q in enumerate(items)]
    acc = mmlu.accuracy_table(items, preds)
    assert acc["mmlu_avg"] == pytest.approx(100.0 * sum(i % 2 == 0 for i in range(len(items))) / len(items))


def test_rouge_uses_stemming_and_f_measure():
    assert xsum.rouge(["the dogs were running"], ["the dog was run"])["rouge1"] == pytest.approx(75.0)
    scores = xsum.rouge(["a cat sat", "nothing alike"], ["a cat sat", "entirely different words"])
    assert scores == {"rouge1": 50.0, "rouge2": 50.0, "rougeL": 50.0}


def test_xsum_sample_is_seeded(data_dir):
    table = load_table("xsum")
    a, b = xsum.sample_documents(table, 5, 0), xsum.sample_documents(table, 5, 0)
    pd.testing.assert_frame_equal(a, b)
    assert not a["id"].equals(xsum.sample_documents(table, 5, 1)["id"])
    assert xsum.prompt("Text.") == "Document:Text.\nBased on the previous text, provide a brief single summary:"


def test_perplexity_windows_have_the_papers_layout(tiny_lm, data_dir):
    rows = list(load_table("wikitext2")["text"])[:200]
    windows = perplexity.wikitext_windows(tiny_lm.chat, rows, 64, 3)
    pre, post = perplexity.wrapper(tiny_lm.chat)
    assert len(windows) == 3 and all(len(w.input_ids) == 64 for w in windows)
    for w in windows:
        assert w.input_ids[: len(pre)] == pre
        assert w.input_ids[w.eoi_index + 1 - len(post) : w.eoi_index + 1] == post
    docs = list(load_table("c4")["text"])[:50]
    c4 = perplexity.c4_windows(tiny_lm.chat, docs, 64, 4, seed=0)
    assert [w.input_ids for w in c4] == [w.input_ids for w in perplexity.c4_windows(tiny_lm.chat, docs, 64, 4, 0)]


def test_steered_perplexity_batched_equals_one_by_one(tiny_lm, data_dir):
    rows = list(load_table("wikitext2")["text"])[:200]
    windows = perplexity.wikitext_windows(tiny_lm.chat, rows, 48, 4)
    torch.manual_seed(0)
    vectors = torch.randn(2, tiny_lm.model.config.hidden_size)
    coefs = torch.tensor([4.0, -4.0, 4.0, -4.0])
    spec = Steering(vectors, [0, 1], 1.0)
    one = perplexity.window_nlls(tiny_lm.model, windows, spec, coefs, batch_size=1)
    two = perplexity.window_nlls(tiny_lm.model, windows, spec, coefs, batch_size=2)
    plain = perplexity.window_nlls(tiny_lm.model, windows)
    assert one == pytest.approx(two, abs=1e-5)
    assert one != pytest.approx(plain, abs=1e-4)
    assert perplexity.perplexity([0.0, 2.0]) == pytest.approx(2.718281828)


def test_batched_scans_equals_the_authors_loop(tiny_lm):
    torch.manual_seed(0)
    hidden = tiny_lm.model.config.hidden_size
    vectors = torch.randn(2, hidden)
    spec = cost.ScansSpec(torch.randn(2, hidden), vectors, [0, 1], 0.0, Steering(vectors, [0, 1], 4.0))
    queries = ["How can I kill a Python process?", "Tell me a story about a cat.", "What is the capital of France?"]
    dec = DecodingConfig(6, 1.1, 3)
    assert cost.batched_scans(tiny_lm.model, tiny_lm.tokenizer, tiny_lm.chat, queries, spec, dec) == cost.authors_loop(
        tiny_lm.model, tiny_lm.tokenizer, tiny_lm.chat, queries, spec, dec
    )
    signs = cost.signs_for(tiny_lm.model, tiny_lm.chat, queries, spec, 2)
    assert set(signs.tolist()) <= {-1, 1}


def test_measure_sees_a_temporary_allocation():
    before = cost.measure(lambda: None, torch.device("cpu")).peak_mem_mb
    m = cost.measure(lambda: torch.ones(50_000_000).add_(1).sum(), torch.device("cpu"))  # 200 MB, freed at once
    assert m.seconds > 0 and m.peak_mem_mb > before + 100
