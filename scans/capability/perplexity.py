"""Perplexity with the authors' protocol (reference §5.5, from GPTQ's datautils).

A window holds `length` tokens in all, the chat wrapper included: its text tokens are split in two halves and
wrapped as a turn, `prompt(first half)` + second half (for Llama-2 `<s>[INST] a [/INST] b`), at the token level so
that no re-tokenisation moves the boundary. The loss is the causal-LM loss over every token, wrapper included;
PPL = exp(mean over windows of the window's mean NLL). SCANS steers from the end of the wrapped instruction on,
that is the second half only, with the sign σ(q) gives the first half's text.

WikiText-2: the test rows joined with "\\n\\n", tokenised once, cut into consecutive windows. C4: `windows`
documents drawn with `random.Random(seed)` among those longer than a window, a random window in each (the
authors' shard is not available here; the local 2,000-document sample stands in: docs/differences.md).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from scans.errors import DataError, ModelError
from scans.models.chat import ChatFormat, tokenize
from scans.models.loading import input_device
from scans.steering.intervention import Intervention, Row, teacher_forced_logits

SENTINEL = "\u0000QUERY\u0000"


@dataclass(frozen=True)
class Window:
    input_ids: list[int]
    eoi_index: int  # last token of the wrapped instruction; steering starts here
    query: str  # the first half's text, what σ(q) classifies
    query_start: int = 0  # first token of the first half, where a method's insertion goes


def wrapper(chat: ChatFormat) -> tuple[list[int], list[int]]:
    """Token ids before and after the query in the chat format."""
    text = chat.prompt(SENTINEL)
    if text.count(SENTINEL) != 1:
        raise ModelError(f"chat format {chat.name} does not place the query exactly once")
    before, after = text.split(SENTINEL)
    return tokenize(chat.tokenizer, before), tokenize(chat.tokenizer, after)


def _wrap(chat: ChatFormat, tokens: Sequence[int], pre: list[int], post: list[int]) -> Window:
    half = len(tokens) // 2
    first, second = list(tokens[:half]), list(tokens[half:])
    ids = pre + first + post + second
    return Window(ids, len(pre) + len(first) + len(post) - 1, chat.tokenizer.decode(first), len(pre))


def _layout(chat: ChatFormat, length: int) -> tuple[list[int], list[int], int]:
    """The wrapper's tokens before and after the text, and how many text tokens a window holds."""
    pre, post = wrapper(chat)
    budget = length - len(pre) - len(post)
    if budget < 2:
        raise ModelError(f"a {length}-token window leaves no room for text inside the {chat.name} wrapper")
    return pre, post, budget


def wikitext_windows(chat: ChatFormat, rows: Sequence[str], length: int, limit: int | None) -> list[Window]:
    tokens = tokenize(chat.tokenizer, "\n\n".join(rows))
    pre, post, budget = _layout(chat, length)
    count = len(tokens) // budget
    if limit is not None:
        count = min(count, limit)
    return [_wrap(chat, tokens[i * budget : (i + 1) * budget], pre, post) for i in range(count)]


def c4_windows(chat: ChatFormat, documents: Sequence[str], length: int, count: int, seed: int) -> list[Window]:
    pre, post, budget = _layout(chat, length)
    rng = random.Random(seed)
    encoded: dict[int, list[int]] = {}
    windows: list[Window] = []
    tries = 0
    while len(windows) < count:
        tries += 1
        if tries > 100 * count:
            raise DataError(f"C4: fewer than {count} documents are longer than {budget} tokens")
        i = rng.randint(0, len(documents) - 1)
        if i not in encoded:
            encoded[i] = tokenize(chat.tokenizer, documents[i])
        tokens = encoded[i]
        if len(tokens) <= budget:
            continue
        start = rng.randint(0, len(tokens) - budget - 1)
        windows.append(_wrap(chat, tokens[start : start + budget], pre, post))
    return windows


@torch.no_grad()
def window_nlls(
    model,
    windows: Sequence[Window],
    intervention: Intervention | None = None,
    coefficients: torch.Tensor | None = None,
    batch_size: int = 1,
    desc: str | None = None,
) -> list[float]:
    """Mean next-token NLL of every window (all tokens, wrapper included) under a method's intervention, with one
    coefficient per window. An inserted text is context only: the loss is over the window's own tokens."""
    iv = intervention or Intervention()
    device = input_device(model)
    out: list[float] = []
    for start in tqdm(range(0, len(windows), batch_size), desc=desc, disable=desc is None, leave=False):
        batch = windows[start : start + batch_size]
        if len({len(w.input_ids) for w in batch}) != 1:
            raise ModelError("windows of one batch must have the same length")
        ids = torch.tensor([w.input_ids for w in batch], device=device)
        coefs = [0.0 if coefficients is None else float(coefficients[start + i]) for i in range(len(batch))]
        rows = [Row(w.eoi_index, len(w.input_ids), w.query_start, c) for w, c in zip(batch, coefs)]
        logits = teacher_forced_logits(iv, model, ids, torch.ones_like(ids), rows).float()
        nll = F.cross_entropy(logits[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none").mean(-1)
        out.extend(nll.tolist())
    return out


def perplexity(nlls: Sequence[float]) -> float:
    return math.exp(sum(nlls) / len(nlls))
