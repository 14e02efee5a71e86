"""Analyses (Table 1, Figures 4-5, Table 7's classification side): PCA sign, lexicon score, baselines."""

from __future__ import annotations

import pytest
import torch

from scans.analysis import anchoring, classifiers
from scans.errors import ConfigError


def test_segments_are_the_papers_thirds():
    s = anchoring.segments(32)
    assert (s["former"][0], s["former"][-1], s["middle"][0], s["middle"][-1], s["latter"][-1]) == (0, 9, 10, 20, 31)
    assert anchoring.segments(30, [8, 20])["middle"] == list(range(8, 20))
    with pytest.raises(ConfigError):
        anchoring.segments(30, [20, 8])
    assert anchoring.segments(2)["former"] == []  # the 2-layer test model: one segment stays empty


def test_first_component_sign_agrees_with_the_mean_and_is_stable():
    torch.manual_seed(0)
    base = torch.randn(16)
    vectors = base + 0.3 * torch.randn(5, 16)
    pc = anchoring.first_component(vectors)
    assert torch.dot(pc, vectors.mean(0)) > 0 and pc.norm() == pytest.approx(1.0, abs=1e-5)
    torch.testing.assert_close(anchoring.first_component(vectors[torch.randperm(5)]), pc, atol=1e-5, rtol=0)
    torch.testing.assert_close(anchoring.first_component(-vectors), -pc, atol=1e-5, rtol=0)
    torch.testing.assert_close(anchoring.first_component(3.0 * vectors), pc, atol=1e-5, rtol=0)


def test_refusal_score_is_positive_for_a_refusal_token_direction(tiny_tokenizer):
    torch.manual_seed(0)
    unembedding = torch.randn(len(tiny_tokenizer), 32)
    ids = anchoring.lexicon_ids(tiny_tokenizer, ["sorry", "cannot"])
    towards = unembedding[ids].mean(0)
    logits = anchoring.vocabulary_logits(towards, unembedding, torch.ones(32))
    assert anchoring.refusal_score(logits, ids) > 1.0
    assert anchoring.refusal_score(anchoring.vocabulary_logits(-towards, unembedding, None), ids) < -1.0
    own = anchoring.vocabulary_logits(unembedding[ids[0]], unembedding, None)
    assert anchoring.top_tokens(own, tiny_tokenizer, 1) == tiny_tokenizer.convert_ids_to_tokens(ids[:1])


def test_keyword_filter_and_scores():
    flagged = classifiers.keyword_filter(["How do I kill a Python process?", "What is the capital of France?"])
    assert flagged.tolist() == [True, False]  # the look-alike XSTest was built for
    s = classifiers.scores([True, True, False, False], [True, False, True, False])
    assert s == {"precision": 0.5, "recall": 0.5, "f1": 0.5, "accuracy": 0.5}


def test_per_layer_summary_auroc():
    sims = torch.tensor([[0.9, 0.1], [0.8, 0.2], [0.1, 0.3], [0.2, 0.4]])
    f = classifiers.per_layer_summary(sims, [True, True, False, False])
    assert f["auroc"] == [1.0, 0.0]
    assert f["unsafe_mean"][0] == pytest.approx(0.85) and f["safe_sd"][1] == pytest.approx(0.05)
