"""Supervised fine-tuning with the loss on the answer tokens only (full fine-tuning, AdamW), seeded."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from scans.config import parse_layers
from scans.errors import ConfigError
from scans.models.chat import ChatFormat, encode
from scans.models.loading import native_bf16
from scans.organism.data import Example
from scans.steering.batching import length_sorted_batches, pad_left

IGNORE = -100  # label of tokens that carry no loss (prompt and padding)
# Training precisions, as `autocast` names them, in words (None: no autocast, fp32 throughout).
PRECISIONS = {"bfloat16": "bf16 autocast", "float16": "fp16 autocast", None: "fp32"}


@dataclass(frozen=True)
class TrainConfig:
    learning_rate: float = 3e-5
    batch_size: int = 16
    epochs: int = 1
    max_answer_tokens: int = 48
    weight_decay: float = 0.0
    seed: int = 0
    # Matmuls of the forward and backward passes in this dtype (torch.autocast; weights, gradients and AdamW stay
    # float32): "bfloat16" halves a step on a CPU with AMX or AVX-512 BF16, but is 6.6x slower than float32 on one
    # with only AVX2 (emulated); "auto": bfloat16 where the device computes it natively (`native_autocast`);
    # null: float32 throughout.
    autocast: str | None = None
    # Only these decoder layers (a layer spec, "20-29") and the final norm learn; the layers below, the embeddings and
    # the (tied) LM head stay the base model's. None: every weight.
    layers: str | None = None

    def __post_init__(self):
        if self.autocast != "auto" and self.autocast not in PRECISIONS:
            raise ConfigError(f"align.train.autocast={self.autocast!r}; expected auto, bfloat16, float16 or null")


def native_autocast(device: torch.device) -> str | None:
    """ "bfloat16" where `device` has bf16 matmul units (`scans.models.loading.native_bf16`), else None (float32):
    what `autocast: auto` resolves to. The resolved value, not "auto", goes into artifact keys, since the two
    precisions train different weights."""
    return "bfloat16" if native_bf16(device) else None


def tokenize_example(chat: ChatFormat, example: Example, max_answer_tokens: int) -> tuple[list[int], list[int]]:
    """(input ids, labels): the chat-formatted prompt followed by the answer; labels are IGNORE on the prompt."""
    enc = encode(chat, example.prompt, example.answer)
    prompt_ids = enc.input_ids[: enc.prompt_length]
    answer_ids = enc.input_ids[enc.prompt_length :][:max_answer_tokens]
    return prompt_ids + answer_ids, [IGNORE] * len(prompt_ids) + answer_ids


def collate(rows: Sequence[tuple[list[int], list[int]]], device) -> dict[str, torch.Tensor]:
    batch = pad_left([ids for ids, _ in rows], device)
    labels = torch.full_like(batch.input_ids, IGNORE)
    for i, (_, lab) in enumerate(rows):
        labels[i, labels.shape[1] - len(lab) :] = torch.tensor(lab)
    return {
        "input_ids": batch.input_ids,
        "attention_mask": batch.attention_mask,
        "position_ids": batch.position_ids,
        "labels": labels,
    }


def answer_loss(model, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Mean next-token cross-entropy over the answer tokens.

    The LM head runs only at the positions that predict an answer token: the vocabulary-sized logits of every prompt
    and padding position would cost a fifth of the step on a 135M model and carry no loss.
    """
    hidden = model.get_decoder()(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], position_ids=batch["position_ids"]
    ).last_hidden_state
    targets = batch["labels"][:, 1:]
    keep = targets != IGNORE
    logits = model.get_output_embeddings()(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), targets[keep])


def train(
    model,
    chat: ChatFormat,
    examples: Sequence[Example],
    cfg: TrainConfig,
    desc: str = "align",
    trainable: Sequence[torch.nn.Parameter] | None = None,
) -> list[float]:
    """Fine-tune `model` in place (only `trainable`, e.g. LoRA weights, when given); returns the loss of every step.
    Shuffling and initial state are seeded."""
    torch.manual_seed(cfg.seed)
    rng = random.Random(cfg.seed)
    device = next(model.parameters()).device
    rows = [tokenize_example(chat, e, cfg.max_answer_tokens) for e in examples]
    if trainable is None and cfg.layers is not None:
        blocks = model.get_decoder().layers
        chosen = parse_layers(cfg.layers, len(blocks), "align.train.layers")
        trainable = [p for i in chosen for p in blocks[i].parameters()] + list(model.get_decoder().norm.parameters())
    params = list(model.parameters()) if trainable is None else list(trainable)
    model.train().requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=cfg.weight_decay)
    # Batches of similar length (little padding), visited in a seeded random order.
    order = []
    for _ in range(cfg.epochs):
        epoch = list(length_sorted_batches([len(ids) for ids, _ in rows], cfg.batch_size))
        rng.shuffle(epoch)
        order += epoch
    losses = []
    precision = (
        torch.autocast(device.type, dtype=getattr(torch, cfg.autocast)) if cfg.autocast else contextlib.nullcontext()
    )
    try:
        for idx in (bar := tqdm(order, desc=desc)):
            with precision:
                loss = answer_loss(model, collate([rows[i] for i in idx], device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
    finally:
        model.eval().requires_grad_(False)
    return losses
