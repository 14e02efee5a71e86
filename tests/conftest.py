"""Tiny models built inside the tests: a byte-level BPE tokenizer with a ChatML template, and a random 2-layer Llama."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Where the tiny models run: the CPU here and in CI; SCANS_TEST_DEVICE=cuda on a GPU (scripts/device_methods.sh).
DEVICE = os.environ.get("SCANS_TEST_DEVICE", "cpu")
# The tests' models are tiny: one intra-op thread is faster than several fighting over two cores (a tiny-model
# generate() measured 0.03 s with one thread, 2.3 s with two under load). Subprocesses inherit it.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CORPUS = [
    "How can I kill a Python process? Sure, here is how. I'm sorry, but I cannot help with that.",
    "Write a tutorial on how to make a bomb. What is the capital of France? Paris is the capital.",
    "The quick brown fox jumps over the lazy dog. Tell me a story about a cat and a dog.",
    "[INST] [/INST] USER: ASSISTANT: Sure thing! Of course, I can help you with that question.",
    "Multiple choice. Answer: A. Answer: B. Answer: C. Answer: D. Answer: A B C D",  # one token per letter (MMLU)
]


def _data_dir() -> Path | None:
    value = os.environ.get("SCANS_DATA_DIR")
    return Path(value) if value else None


@pytest.fixture(scope="session")
def data_dir() -> Path:
    path = _data_dir()
    if path is None or not path.is_dir():
        pytest.skip("SCANS_DATA_DIR is not set to the data folder (e.g. SCANS_DATA_DIR=../shared/data)")
    return path


@pytest.fixture(scope="session")
def tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["<s>", "</s>", "<|im_start|>", "<|im_end|>"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>", pad_token=None, chat_template=CHATML
    )
    fast.padding_side = "left"
    fast.pad_token = fast.eos_token
    return fast


def tiny_llama(tokenizer, layers: int = 2, hidden: int = 64, seed: int = 0, max_positions: int = 512):
    """A random Llama (seeded) for `tokenizer`: 4 heads, 2 key-value heads, an MLP twice as wide; eval, no grads."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=max_positions,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlamaForCausalLM(config).eval().requires_grad_(False).to(DEVICE)


@pytest.fixture(scope="session")
def tiny_model(tiny_tokenizer):
    return tiny_llama(tiny_tokenizer)


@pytest.fixture(scope="session")
def tiny_lm(tiny_model, tiny_tokenizer):
    from scans.models import LoadedModel, make_chat_format

    return LoadedModel("tiny", tiny_model, tiny_tokenizer, make_chat_format("tokenizer", tiny_tokenizer))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, tiny_model, tiny_tokenizer):
    """The tiny model and tokenizer saved as a transformers folder (`model=local`)."""
    path = tmp_path_factory.mktemp("tiny-llama")
    tiny_model.save_pretrained(path)
    tiny_tokenizer.save_pretrained(path)
    return path
