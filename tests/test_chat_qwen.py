"""Qwen2.5-Coder-0.5B-Instruct's chat format with its real tokenizer, and steering on a tiny random Qwen2 model.

The tokenizer is the one `transformers` converts from the model's GGUF (`../shared/models/qwen2.5-coder-0.5b-instruct`,
or `$SCANS_MODELS_DIR/qwen2.5-coder-0.5b-instruct`). The expected prompt is written out here from Qwen's documented
ChatML format, with the default system prompt Qwen2.5's template adds when a conversation has none; the expected
token ids are the tokenizer's own `apply_chat_template(tokenize=True)`, not this project's tokenization.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from conftest import DEVICE
from omegaconf import OmegaConf
from test_steering import assert_steering_only_from_instruction_end

from scans.models import LoadedModel, encode, make_chat_format
from scans.models.chat import tokenize
from scans.models.loading import prepare_tokenizer
from scans.steering import DecodingConfig, Steering, generate
from scans.steering.intervention import insert_encoded

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
QUERIES = [
    "How can I kill a Python process?",
    " leading space and trailing space ",
    "Write 12 lines in 2024, then stop!",
    "Is naïve café ok? 你好",
    "line one\nline two",
]


def _models_dir() -> Path:
    if os.environ.get("SCANS_MODELS_DIR"):
        return Path(os.environ["SCANS_MODELS_DIR"])
    data = os.environ.get("SCANS_DATA_DIR")
    return Path(data).parent / "models" if data else Path(__file__).resolve().parents[2] / "shared" / "models"


@pytest.fixture(scope="module")
def qwen_tokenizer():
    from transformers import AutoTokenizer

    path = _models_dir() / "qwen2.5-coder-0.5b-instruct"
    if not (path / "tokenizer.json").is_file():
        pytest.skip(f"Qwen's tokenizer is not at {path} (set SCANS_MODELS_DIR to the shared models folder)")
    tok = AutoTokenizer.from_pretrained(path)
    prepare_tokenizer(tok)
    return tok


@pytest.fixture(scope="module")
def chat(qwen_tokenizer):
    cfg = OmegaConf.load(CONFIGS / "model" / "qwen2_5_coder_0_5b_instruct.yaml")
    return make_chat_format(cfg.chat_format, qwen_tokenizer, cfg.system_prompt)


@pytest.fixture(scope="module")
def qwen_lm(qwen_tokenizer, chat):
    """A random 2-layer Qwen2 (biased q/k/v projections, untied head) over the real vocabulary."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    config = Qwen2Config(
        vocab_size=len(qwen_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
        eos_token_id=qwen_tokenizer.eos_token_id, pad_token_id=qwen_tokenizer.pad_token_id,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config).eval().requires_grad_(False).to(DEVICE)
    return LoadedModel("tiny-qwen2", model, qwen_tokenizer, chat)


def test_the_prompt_is_chatml_with_qwens_default_system_prompt(chat, qwen_tokenizer):
    q = QUERIES[0]
    expected = f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n"
    assert chat.prompt(q) == expected
    # generation stops at the end of the assistant's turn, and padding is never a token of the prompt
    assert qwen_tokenizer.eos_token == "<|im_end|>" and qwen_tokenizer.padding_side == "left"


@pytest.mark.parametrize("query", QUERIES)
def test_end_of_instruction_and_query_start(chat, qwen_tokenizer, query):
    """The prompt's ids are the tokenizer's own; the end of instruction is the assistant header's last token (its
    newline), and the query starts right after the user header."""
    enc = encode(chat, query)
    messages = [{"role": "user", "content": query}]
    own = qwen_tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True)
    assert enc.input_ids == list(own["input_ids"])
    ids = enc.input_ids
    assert enc.eoi_index == len(ids) - 1
    assert qwen_tokenizer.decode(ids[enc.eoi_index - 2 :]) == "<|im_start|>assistant\n"
    qs = enc.query_start
    assert qwen_tokenizer.decode(ids[:qs]).endswith("<|im_start|>user\n")
    assert qwen_tokenizer.decode(ids[qs:]) == f"{query}<|im_end|>\n<|im_start|>assistant\n"


@pytest.mark.parametrize("query", QUERIES)
def test_the_compliant_response_of_sigma_follows_the_prompt(chat, qwen_tokenizer, query):
    """σ(q)'s "Sure" is appended after the assistant header, its tokens after the prompt's unchanged ones."""
    plain, sure = encode(chat, query), encode(chat, query, "Sure")
    assert sure.eoi_index == plain.eoi_index
    assert sure.input_ids[: plain.eoi_index + 1] == plain.input_ids
    assert qwen_tokenizer.decode(sure.input_ids[sure.eoi_index + 1 :]) == "Sure"


@pytest.mark.parametrize("method", ["self_cd", "prompt", "dro"])
def test_inserted_text_lands_before_the_query(chat, qwen_tokenizer, method):
    """The insertion methods' text (Self-CD's safety text, the Prompt row's few-shot block, DRO's initial prompt) goes
    in right after the user header, and the whole decodes as the prompt of text + query."""
    from hydra.utils import instantiate

    m = instantiate(OmegaConf.load(CONFIGS / "method" / f"{method}.yaml"), _convert_="all")
    if method == "prompt":
        text = m.text()
    else:
        text = (m.safety_text if method == "self_cd" else m.init_prompt) + m.separator
    for query in QUERIES[:3]:
        enc = encode(chat, query)
        inserted = insert_encoded(enc, tokenize(qwen_tokenizer, text))
        assert qwen_tokenizer.decode(inserted.input_ids) == chat.prompt(text + query)
        assert inserted.input_ids[inserted.eoi_index :] == enc.input_ids[enc.eoi_index :]


def test_steering_positions_under_left_padding(qwen_lm):
    """On a Qwen2 model, steering from the end of instruction changes the states at and after each row's
    end-of-instruction token and nothing before it, with rows of different lengths left-padded."""
    assert_steering_only_from_instruction_end(qwen_lm, [encode(qwen_lm.chat, q, "Sure") for q in QUERIES])


def test_steered_generation_batched_equals_one_by_one_on_qwen2(qwen_lm):
    """Per-row signs in one left-padded batch give each row's own steered generation (the engine's shared prefix is
    Qwen's system prompt and user header here)."""
    g = torch.Generator().manual_seed(1)
    spec = Steering(torch.randn(2, 32, generator=g), [0, 1], 4.0)
    enc = [encode(qwen_lm.chat, q) for q in QUERIES]
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0, -1.0])
    lm = qwen_lm
    batched = generate(lm.model, lm.tokenizer, enc, DecodingConfig(6, 1.1, 8), spec, signs)
    single = [
        generate(lm.model, lm.tokenizer, [e], DecodingConfig(6, 1.1, 1), spec, signs[i : i + 1])[0]
        for i, e in enumerate(enc)
    ]
    assert batched == single


def test_table1_shows_byte_level_tokens_as_the_text_they_decode_to(qwen_tokenizer):
    """Table 1 lists vocabulary entries; Qwen's byte-level BPE spells Cyrillic and CJK as bytes in its own alphabet
    (`ĠÐ°Ð´...`), which the page shows as the tokenizer itself decodes them, a leading space as "_"."""
    from scans.report.analysis import _clean

    entries = ["ĠÐ°Ð´Ð¼Ð¸Ð½Ð¸ÑģÑĤ", "ÑıÑģ", "ĠWILL", "'ll", "Ġexploiting"]  # from its Table 1
    entries += qwen_tokenizer.convert_ids_to_tokens(qwen_tokenizer("你好 naïve", add_special_tokens=False)["input_ids"])
    for entry in entries:
        i = qwen_tokenizer.convert_tokens_to_ids(entry)
        assert i != qwen_tokenizer.unk_token_id, entry
        text = qwen_tokenizer.decode([i])
        assert _clean(entry) == (text.replace(" ", "_") if "\ufffd" not in text else entry), entry  # a part of a char
    assert _clean("ĠÐ°Ð´Ð¼Ð¸Ð½Ð¸ÑģÑĤ") == "_админист"
