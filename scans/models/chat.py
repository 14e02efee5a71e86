"""Chat formatting: one class per prompt family, and the end-of-instruction position.

SCANS reads hidden states at the end of the instruction (the last token of the user turn's closing marker:
the "]" of "[/INST]" for Llama-2, the ":" of "ASSISTANT:" for Vicuna) and steers from there on
(reference §4, "Where steering is added"). Every formatted prompt here *ends* at that marker, so the
end-of-instruction position of a row is the index of its last prompt token. When a response is appended
(the positive response "Sure" of Eq. 2, or a second half of a perplexity window), the prompt's tokens must
be a prefix of the full sequence's tokens; if tokenization merges across the boundary the position cannot be
found, and that is an error, never a silent fallback (the authors' search returned -1 and steered everything).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

from scans.errors import ConfigError, ModelError

# Vicuna v1.1 system prompt, both sentences (the authors' extraction path kept only the first: reference §7 D7).
VICUNA_SYSTEM = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)


class ChatFormat(ABC):
    """Turns a user query into the text that ends at the end-of-instruction marker."""

    name: str

    def __init__(self, tokenizer, system_prompt: str | None = None):
        self.tokenizer = tokenizer
        self.system_prompt = system_prompt

    @abstractmethod
    def prompt(self, query: str) -> str:
        """The chat-formatted prompt, BOS included, ending at the end-of-instruction marker."""

    def with_response(self, query: str, response: str) -> str:
        """The prompt followed by the start of the assistant's answer (e.g. "Sure", Eq. 2)."""
        prompt = self.prompt(query)
        sep = "" if prompt[-1:].isspace() else " "
        return prompt + sep + response


class Llama2Format(ChatFormat):
    """`<s>[INST] {q} [/INST]`, no system prompt: exactly the authors' Llama-2 template (reference §4)."""

    name = "llama2"

    def prompt(self, query: str) -> str:
        bos = self.tokenizer.bos_token or ""
        if self.system_prompt:
            return f"{bos}[INST] <<SYS>>\n{self.system_prompt}\n<</SYS>>\n\n{query} [/INST]"
        return f"{bos}[INST] {query} [/INST]"


class VicunaFormat(ChatFormat):
    """Vicuna v1.1 as the authors generated with: `<s>{SYS} USER: {q} \\nASSISTANT:` (full system prompt, BOS)."""

    name = "vicuna"

    def prompt(self, query: str) -> str:
        bos = self.tokenizer.bos_token or ""
        system = VICUNA_SYSTEM if self.system_prompt is None else self.system_prompt
        return f"{bos}{system} USER: {query} \nASSISTANT:"


class TokenizerTemplateFormat(ChatFormat):
    """The tokenizer's own chat template, with the generation prompt (the assistant header) appended."""

    name = "tokenizer"

    def prompt(self, query: str) -> str:
        if not getattr(self.tokenizer, "chat_template", None):
            raise ModelError("chat_format=tokenizer but this tokenizer has no chat template; use llama2 or vicuna")
        messages = [{"role": "user", "content": query}]
        if self.system_prompt:
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


class PrefilledFormat(ChatFormat):
    """Another format's prompt with the assistant's turn already started by `prefill` (the prefill jailbreak attack):
    the model's input, and so its end of instruction, ends with the prefill. Whatever reads the prompt (σ(q)'s
    "prompt + Sure", the steering positions) reads the input the model is given."""

    name = "prefilled"

    def __init__(self, base: ChatFormat, prefill: str):
        super().__init__(base.tokenizer, base.system_prompt)
        self.base = base
        self.prefill = prefill

    def prompt(self, query: str) -> str:
        prompt = self.base.prompt(query)
        return prompt + ("" if prompt[-1:].isspace() else " ") + self.prefill


CHAT_FORMATS: dict[str, type[ChatFormat]] = {
    cls.name: cls for cls in (Llama2Format, VicunaFormat, TokenizerTemplateFormat)
}


def make_chat_format(name: str, tokenizer, system_prompt: str | None = None) -> ChatFormat:
    if name not in CHAT_FORMATS:
        raise ConfigError(f"unknown chat_format {name!r}; known: {', '.join(sorted(CHAT_FORMATS))}")
    return CHAT_FORMATS[name](tokenizer, system_prompt)


@dataclass(frozen=True)
class Encoded:
    """Token ids of one row (no padding) and the index of its end-of-instruction token."""

    input_ids: list[int]
    eoi_index: int
    query_start: int | None = None  # index of the query's first token, where insertion methods add their text

    @property
    def prompt_length(self) -> int:
        return self.eoi_index + 1


def tokenize(tokenizer, text: str) -> list[int]:
    """Token ids of `text`, whose BOS / template tokens are already in it (so the tokenizer adds none of its own).

    A leading BOS string (the `<s>` of the Llama-2 and Vicuna formats) becomes the BOS *id*, and the rest is tokenized
    on its own, as a sequence start. Tokenizing "<s>[INST] ..." as one string is not the same for every tokenizer:
    a SentencePiece tokenizer gives the text after an added token the dummy prefix ("▁[") only in legacy mode; a
    non-legacy one (transformers' fast LlamaTokenizer with legacy=False, Metaspace prepend_scheme="first") gives it
    "[" instead, ids the model never saw after BOS. Splitting off BOS makes the ids equal `tokenizer(text_without_bos)`
    (BOS added by the tokenizer), the authors' encoding, for every variant; for byte-level BPE it changes nothing, as
    added tokens split the text there anyway.
    """
    bos = getattr(tokenizer, "bos_token", None)
    bos_id = getattr(tokenizer, "bos_token_id", None)
    if bos and bos_id is not None and text.startswith(bos):
        return [bos_id] + tokenizer(text[len(bos) :], add_special_tokens=False)["input_ids"]
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def query_start(chat: ChatFormat, query: str, prompt_ids: list[int]) -> int | None:
    """Index of the query's first token in `prompt_ids`: the tokens of the text before the query (with or without
    its trailing spaces, which SentencePiece folds into the query's first piece) must be a prefix; else None."""
    text = chat.prompt(query)
    cut = text.rfind(query) if query else -1
    if cut < 0:
        return None
    for head in (text[:cut], text[:cut].rstrip(" ")):
        ids = tokenize(chat.tokenizer, head)
        if prompt_ids[: len(ids)] == ids:
            return len(ids)
    return None


def encode(chat: ChatFormat, query: str, response: str | None = None) -> Encoded:
    """Tokenize a query (optionally followed by a response) and locate its end of instruction."""
    prompt_ids = tokenize(chat.tokenizer, chat.prompt(query))
    if not prompt_ids:
        raise ModelError(f"empty prompt after formatting query {query[:60]!r}")
    if response is None:
        return Encoded(prompt_ids, len(prompt_ids) - 1, query_start(chat, query, prompt_ids))
    full_ids = tokenize(chat.tokenizer, chat.with_response(query, response))
    if full_ids[: len(prompt_ids)] != prompt_ids or len(full_ids) == len(prompt_ids):
        raise ModelError(
            f"cannot locate the end of instruction in {chat.name} prompt for query {query[:60]!r}: "
            f"the prompt's tokens are not a prefix of prompt+{response!r}"
        )
    return Encoded(full_ids, len(prompt_ids) - 1)
