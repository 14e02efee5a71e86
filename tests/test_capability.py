"""Capability and cost (Tables 3 and 4): MMLU through lm-eval with per-row steering, XSum ROUGE, perplexity windows,
and the batched SCANS pipeline against the authors' one-prompt loop."""

from __future__ import annotations

import dataclasses

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
    # Hendrycks' format_subject: " " + word for every word, so "about" is followed by two spaces.
    assert q.prompt.startswith(
        "The following are multiple choice questions (with answers) about  abstract algebra.\n\n"
    )
    assert q.prompt.count("\nAnswer:") == 6 and q.prompt.endswith("\nD. " + q.prompt.split("\nD. ")[-1])
    assert q.prompt.endswith("Answer:") and q.shots == 5
    assert qs == mmlu.questions(mmlu_table, tiny_tokenizer, shots=5, per_subject=2, seed=0, max_length=100_000)
    short = mmlu.questions(mmlu_table, tiny_tokenizer, shots=5, per_subject=2, seed=0, max_length=400)
    assert all(len(tiny_tokenizer(s.prompt)["input_ids"]) <= 400 or s.shots == 0 for s in short)
    assert any(s.shots < 5 for s in short)


def test_answer_start_is_the_last_token_of_the_last_answer_marker(items, tiny_tokenizer):
    for q in items:
        ids = tiny_tokenizer(q.prompt, add_special_tokens=False)["input_ids"]
        start, bos = mmlu.answer_start(tiny_tokenizer, ids, q.prompt)
        # The prompt ends with the marker: its last token is the prompt's last, and the tokens before it do not
        # yet spell the whole marker.
        assert start == len(ids) - 1 and bos == 0
        assert tiny_tokenizer.decode(ids[: start + 1]).endswith(mmlu.ANSWER_MARK)
        assert not tiny_tokenizer.decode(ids[:start]).endswith(mmlu.ANSWER_MARK)
        with_bos = [tiny_tokenizer.bos_token_id, *ids]
        assert mmlu.answer_start(tiny_tokenizer, with_bos, q.prompt) == (start + 1, 1)


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


def test_batched_scans_matches_the_authors_algorithm_written_from_the_reference(tiny_tokenizer, monkeypatch):
    """The project's batched SCANS (σ(q) in batches, then one left-padded steered generation) against SCANS per query
    as the reference describes it, written here without project code: σ(q) = mean over 𝓛 of cos(a_p - a_e, d_harm^l)
    with a_p at the last token of the last "[/INST]" of "<s>[INST] q [/INST] Sure" and a_e at its last token (HF
    hidden_states[l + 1]); sign +1 if σ >= 𝒯 else -1; then the authors' decoding (top_k=1 sampling, repetition
    penalty 1.1) of the unpadded prompt with sign·α·v^l added to the output of each steered block from the
    instruction end on. 𝒯 splits the queries' σ, so both signs occur."""
    import torch.nn.functional as F
    from authors import after_position, marker_end
    from conftest import DEVICE, tiny_llama

    from scans.models.chat import Llama2Format, encode
    from scans.steering import classify, generate, harm_similarity

    tok = tiny_tokenizer
    model = tiny_llama(tok, layers=3, hidden=48, seed=99, max_positions=256)
    g = torch.Generator().manual_seed(3)
    vectors = F.normalize(torch.randn(3, 48, generator=g), dim=-1)  # v_r^l, unit (reference §7 D1)
    direction = torch.randn(3, 48, generator=g)  # d_harm^l
    # 𝓛 leaves out the last layer, whose HF hidden state is post-norm (reference §7 D15; the project reads pre-norm).
    classify_layers, steer_layers, alpha, new_tokens = [0, 1], [1, 2], 2.0, 6
    queries = [
        "Hi",
        "How can I kill a Python process?",
        "Write a tutorial on how to make a bomb. Tell me a story about a cat and a dog.",
        "What does [/INST] mean in a Llama prompt?",  # the marker inside the query: the last occurrence counts
    ]
    marker = tok(" [/INST]", add_special_tokens=False)["input_ids"]

    # σ(q), one query at a time.
    sigma = []
    for q in queries:
        ids = tok(f"<s>[INST] {q} [/INST] Sure", add_special_tokens=False)["input_ids"]
        p = marker_end(ids, marker)
        with torch.no_grad():
            hs = model(torch.tensor([ids], device=DEVICE), output_hidden_states=True).hidden_states
        cos = [
            F.cosine_similarity(hs[layer + 1][0, p] - hs[layer + 1][0, -1], direction[layer].to(DEVICE), dim=0)
            for layer in classify_layers
        ]
        sigma.append(float(torch.nan_to_num(torch.stack(cos)).mean()))
    low, high = sorted(sigma)[len(sigma) // 2 - 1 : len(sigma) // 2 + 1]
    assert high - low > 1e-3  # no σ within float noise of 𝒯
    threshold = (low + high) / 2
    signs = [1 if s >= threshold else -1 for s in sigma]
    assert sorted(set(signs)) == [-1, 1]

    # Generation, one unpadded query at a time, through block wrappers.
    def until_eos(tokens: torch.Tensor) -> list[int]:
        tokens = tokens.tolist()
        return tokens[: tokens.index(tok.eos_token_id) + 1] if tok.eos_token_id in tokens else tokens

    expected, expected_ids = [], []
    for q, sign in zip(queries, signs):
        ids = tok(f"<s>[INST] {q} [/INST]", add_special_tokens=False)["input_ids"]
        after = marker_end(ids, marker)
        with torch.no_grad(), after_position(model, {i: sign * alpha * vectors[i] for i in steer_layers}, after):
            out = model.generate(
                input_ids=torch.tensor([ids], device=DEVICE), attention_mask=torch.ones(1, len(ids), device=DEVICE),
                max_new_tokens=new_tokens, do_sample=True, top_k=1, repetition_penalty=1.1,
                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id,
            )  # fmt: skip
        expected_ids.append(until_eos(out[0, len(ids) :]))
        expected.append(tok.decode(out[0, len(ids) :], skip_special_tokens=True).strip())

    chat = Llama2Format(tok)
    spec = cost.ScansSpec(direction, vectors, classify_layers, threshold, Steering(vectors, steer_layers, alpha))
    dec = DecodingConfig(max_new_tokens=new_tokens, batch_size=len(queries))  # one left-padded batch
    project_sims = harm_similarity(classify(model, chat, queries, direction, 2).layer_similarities, classify_layers)
    torch.testing.assert_close(project_sims, torch.tensor(sigma), rtol=0, atol=1e-5)
    assert cost.signs_for(model, chat, queries, spec, 2).tolist() == signs
    calls = []
    original_generate = model.generate

    def recording(**kwargs):
        out = original_generate(**kwargs)
        calls.append((kwargs["input_ids"], kwargs["attention_mask"], out))
        return out

    assert cost.batched_scans(model, tok, chat, queries, spec, dec) == expected  # the engine (shared prefix)
    monkeypatch.setattr(model, "generate", recording)
    got = cost.batched_scans(model, tok, chat, queries, spec, dataclasses.replace(dec, engine="hf"))
    monkeypatch.undo()
    assert got == expected
    # The same token ids, row by row: each batch row is known by its unpadded prompt.
    ((input_ids, mask, out),) = calls  # one left-padded batch
    assert (mask == 0).any()
    prompts = [tok(f"<s>[INST] {q} [/INST]", add_special_tokens=False)["input_ids"] for q in queries]
    got_ids = {}
    for row, row_mask, row_out in zip(input_ids, mask, out):
        got_ids[prompts.index(row[row_mask.bool()].tolist())] = until_eos(row_out[input_ids.shape[1] :])
    assert [got_ids[i] for i in range(len(queries))] == expected_ids
    # Every row's text depends on its sign, so a sign lost on the way to the hook would show.
    flipped = generate(model, tok, [encode(chat, q) for q in queries], dec, spec.steer, -torch.tensor(signs))
    assert all(f != e for f, e in zip(flipped, expected)), (flipped, expected)


def test_measure_sees_a_temporary_allocation():
    before = cost.measure(lambda: None, torch.device("cpu")).peak_mem_mb
    m = cost.measure(lambda: torch.ones(50_000_000).add_(1).sum(), torch.device("cpu"))  # 200 MB, freed at once
    assert m.seconds > 0 and m.peak_mem_mb > before + 100
