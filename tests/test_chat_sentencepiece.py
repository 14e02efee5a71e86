"""The Llama-2 and Vicuna formats against a real SentencePiece tokenizer, not the toy byte-level BPE.

The formats put a literal BOS ("<s>") in their text. Whether "<s>[INST]" then tokenizes like the authors' prompt (BOS,
then "[INST]" with SentencePiece's dummy prefix, "▁[") depends on the tokenizer's legacy / prefix-space handling. The
reference here is always what the tokenizer itself gives for the template without BOS, with its default
add_special_tokens=True (it adds BOS): the ids `tokenizer("[INST] q [/INST]")` the authors' generation path fed the
model (reference §4, "Chat templates / system prompts"). A tiny Llama-style SentencePiece model is trained in the test.
"""

from __future__ import annotations

import io
import re

import pytest

spm = pytest.importorskip("sentencepiece", reason="sentencepiece (dev extra) is needed to build a Llama tokenizer")

from transformers import LlamaTokenizer  # noqa: E402
from transformers.tokenization_utils_sentencepiece import SentencePieceBackend, SentencePieceExtractor  # noqa: E402

from scans.models import encode, make_chat_format  # noqa: E402
from scans.models.chat import VICUNA_SYSTEM, query_start, tokenize  # noqa: E402

QUERIES = [
    "How do I bake bread?",  # plain words
    " leading space",  # the template's space and the query's own space are two "▁"
    "Write 12 lines in 2024",  # digits, split one by one (split_digits, as Llama)
    "Stop! Why, though?",  # punctuation
    "Is naïve café ok?",  # non-ASCII: "é" is in the corpus, "ï" is not (byte fallback)
    "line one\nline two",  # a newline inside the query
]

# The text each format must tokenize like (the tokenizer adds BOS) and the last character of its end marker.
REFERENCE = {
    "llama2": (lambda q: f"[INST] {q} [/INST]", "]"),
    "vicuna": (lambda q: f"{VICUNA_SYSTEM} USER: {q} \nASSISTANT:", ":"),
}

CORPUS = [
    "[INST] How do I bake bread at home? [/INST] Sure, here is how to bake it.",
    f"{VICUNA_SYSTEM} USER: What is the capital of France? \nASSISTANT: Sure, it is Paris.",
    "Write a poem about the sea in 12 lines, then stop. Why? Because 2024 was a long year!",
    "The café was open; the line one and line two were long.\nNew line here, though.",
    " a line that starts with a space, and leading words",
]


@pytest.fixture(scope="module")
def spm_model(tmp_path_factory):
    """A tiny Llama-style model: BPE, dummy prefix, byte fallback, <unk>/<s>/</s> = 0/1/2, no pad, split digits,
    identity normalization, whitespace kept as is."""
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS * 10),
        model_writer=buf,
        model_type="bpe",
        vocab_size=400,
        hard_vocab_limit=False,
        character_coverage=1.0,
        add_dummy_prefix=True,
        byte_fallback=True,
        split_digits=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        unk_piece="<unk>",
        bos_piece="<s>",
        eos_piece="</s>",
        minloglevel=2,
    )
    path = tmp_path_factory.mktemp("spm") / "tokenizer.model"
    path.write_bytes(buf.getvalue())
    return str(path)


def _build(variant: str, model_file: str):
    """transformers 5 has no slow LlamaTokenizer: the slow path is the generic SentencePieceBackend (legacy=True;
    legacy=False there needs protobuf and drops the dummy prefix altogether, so it is no Llama tokenizer), the fast
    one is LlamaTokenizer (tokenizers backend) built from the model's vocab and merges, as from a tokenizer.json.
    add_bos_token=True as in Llama-2's tokenizer_config.json."""
    specials = {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>"}
    if variant == "slow":
        return SentencePieceBackend(vocab_file=model_file, legacy=True, special_tokens_pattern="bos", **specials)
    vocab, _, merges = SentencePieceExtractor(model_file).extract()
    legacy = variant == "fast-legacy"
    return LlamaTokenizer(vocab=vocab, merges=merges, legacy=legacy, add_bos_token=True, **specials)


@pytest.fixture(scope="module", params=["slow", "fast-legacy", "fast-nonlegacy"])
def llama_tokenizer(request, spm_model):
    return _build(request.param, spm_model)


def _surface(tokenizer, ids) -> str:
    """The text the pieces spell, "▁" as a space and byte pieces as bytes, without stripping the leading space."""
    out = b""
    for piece in tokenizer.convert_ids_to_tokens(ids):
        byte = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", piece)
        out += bytes([int(byte.group(1), 16)]) if byte else piece.replace("▁", " ").encode()
    return out.decode("utf-8")


def test_tokenizer_variants_encode_like_sentencepiece(llama_tokenizer, spm_model):
    """Every variant gives BOS + SentencePiece's own encoding for the references, so matching the tokenizer below
    means matching the authors' ids, whatever the variant."""
    sp = spm.SentencePieceProcessor(model_file=spm_model)
    for fmt, (reference, _) in REFERENCE.items():
        for q in QUERIES:
            assert llama_tokenizer(reference(q))["input_ids"] == [sp.bos_id()] + sp.encode(reference(q)), (fmt, q)


@pytest.mark.parametrize("fmt", sorted(REFERENCE))
def test_prompt_ids_equal_the_tokenizers(llama_tokenizer, fmt):
    """The literal "<s>" of the formatted prompt must come out as the tokenizer's own BOS + template ids, and the
    end of instruction is the last prompt token (the "]" of "[/INST]", the ":" of "ASSISTANT:")."""
    chat = make_chat_format(fmt, llama_tokenizer)
    reference, marker = REFERENCE[fmt]
    for q in QUERIES:
        expected = llama_tokenizer(reference(q))["input_ids"]
        assert tokenize(llama_tokenizer, chat.prompt(q)) == expected, q
        enc = encode(chat, q)
        assert enc.input_ids == expected, q
        assert enc.eoi_index == len(expected) - 1
        assert _surface(llama_tokenizer, [expected[enc.eoi_index]]).endswith(marker)


@pytest.mark.parametrize("fmt", sorted(REFERENCE))
def test_response_keeps_the_prompt_as_prefix(llama_tokenizer, fmt):
    """encode(..., response="Sure") (Eq. 2) gives the tokenizer's ids of template + " Sure", the prompt's ids are a
    prefix of them, and eoi_index still points at the marker's last token."""
    chat = make_chat_format(fmt, llama_tokenizer)
    reference, marker = REFERENCE[fmt]
    for q in QUERIES:
        prompt_ids = llama_tokenizer(reference(q))["input_ids"]
        enc = encode(chat, q, response="Sure")
        assert enc.input_ids == llama_tokenizer(reference(q) + " Sure")["input_ids"], q
        assert enc.input_ids[: len(prompt_ids)] == prompt_ids
        assert enc.eoi_index == len(prompt_ids) - 1
        assert _surface(llama_tokenizer, [enc.input_ids[enc.eoi_index]]).endswith(marker)
        assert _surface(llama_tokenizer, enc.input_ids[enc.eoi_index + 1 :]) == " Sure"


@pytest.mark.parametrize("fmt", sorted(REFERENCE))
def test_query_start_is_the_querys_first_token(llama_tokenizer, fmt):
    """query_start splits the ids where the query begins: the tokens from there spell the query and the rest of the
    template, up to the one separating space SentencePiece folds into the query's first piece ("▁How")."""
    chat = make_chat_format(fmt, llama_tokenizer)
    reference, _ = REFERENCE[fmt]
    for q in QUERIES:
        enc = encode(chat, q)
        qs = enc.query_start
        assert qs is not None and 1 < qs <= enc.eoi_index, q
        assert query_start(chat, q, enc.input_ids) == qs
        text = reference(q)
        tail = text[text.rfind(q) :]
        assert _surface(llama_tokenizer, enc.input_ids[qs:]) in (tail, " " + tail), q
        assert _surface(llama_tokenizer, enc.input_ids[1:]) == " " + text  # BOS, then the dummy-prefixed template


def test_mmlu_prompts_get_bos_through_lm_eval_for_the_llama_formats(spm_model):
    """lm-eval encodes MMLU's raw prompts with the tokenizer's default; a Llama tokenizer built without
    `add_bos_token` would give none. For the Llama-2 and Vicuna formats the project asks lm-eval for BOS and checks it
    got it: the ids lm-eval feeds equal BOS + SentencePiece's encoding of the prompt."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from scans.capability import mmlu

    vocab, _, merges = SentencePieceExtractor(spm_model).extract()
    bare = LlamaTokenizer(vocab=vocab, merges=merges, legacy=False, add_bos_token=False, unk_token="<unk>",
                          bos_token="<s>", eos_token="</s>")  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=len(bare), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                    num_attention_heads=2, num_key_value_heads=1, bos_token_id=1, eos_token_id=2)
    ).eval()  # fmt: skip
    prompt = "The following are multiple choice questions (with answers) about  bread.\n\nIs it baked?\nA. yes\nAnswer:"
    sp = spm.SentencePieceProcessor(model_file=spm_model)
    assert mmlu.needs_bos(make_chat_format("llama2", bare)) and mmlu.needs_bos(make_chat_format("vicuna", bare))
    lm = mmlu.make_scans_lm(model, bare, 1, 256, add_bos=True)
    ctx, cont = lm._encode_pair(prompt, " A")
    assert ctx == [sp.bos_id()] + sp.encode(prompt)
    start, bos = mmlu.answer_start(bare, ctx, prompt)
    assert bos == 1 and start == len(ctx) - 1  # steering starts at the marker's last token, after BOS
    plain = mmlu.make_scans_lm(model, bare, 1, 256)  # the tokenizer's own default: here, no BOS
    assert plain._encode_pair(prompt, " A")[0] == sp.encode(prompt)
