"""Training pools for the methods that fit something on activations (CAST, AdaSteer, AlphaSteer, LLM-VA).

A pool is a seeded sample of prompts from sets that are never reported (Alpaca; the harmful training sets the organism
learns from; HarmfulQ), cleared by the one disjointness rule, and the states of the model on them: each decoder
layer's output at the last prompt token (the token whose state decides the first answer token, where SCANS reads too)
or averaged over the query's tokens. Nothing here is cached: a method fits its parameters from the states inside its
own `prepared` artifact and keeps only those.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from scans.artifacts import stable_hash
from scans.data import load_prompts
from scans.methods.base import check_disjoint
from scans.models import encode
from scans.steering import hidden_states


@dataclass(frozen=True)
class PoolSpec:
    """`size` prompts drawn (seeded) from the union of `sources` before the rule; None: every prompt."""

    sources: tuple[str, ...]
    size: int | None = None

    @classmethod
    def of(cls, value) -> PoolSpec:
        """From a YAML value: a set name, a list of names, or {sources: [...], size: n}."""
        if isinstance(value, PoolSpec):
            return value
        if isinstance(value, str):
            return cls((value,))
        if isinstance(value, dict):
            return cls(tuple(PoolSpec.of(value["sources"]).sources), value.get("size"))
        return cls(tuple(str(v) for v in value))


def pool_texts(run, spec: PoolSpec, seed: int, what: str) -> tuple[list[str], dict]:
    """The pool's prompts, sampled then cleared by the disjointness rule, and the rule's record."""
    texts = list(dict.fromkeys(p.text for name in spec.sources for p in load_prompts(name)))
    if spec.size is not None and len(texts) > spec.size:
        texts = [texts[i] for i in sorted(random.Random(seed).sample(range(len(texts)), spec.size))]
    overlap = check_disjoint(run, texts, f"{what} ({', '.join(spec.sources)})")
    kept = overlap.pop("kept_indices")
    return [texts[i] for i in kept], overlap


def draw_pools(run, sides: dict[str, PoolSpec], seed: int, what: str) -> tuple[dict[str, list[str]], dict[str, dict]]:
    """`pool_texts` of each side (harmful, benign), and the rule's record of each, by side."""
    pools, overlap = {}, {}
    for role, spec in sides.items():
        pools[role], overlap[role] = pool_texts(run, spec, seed, f"{what} {role}")
    return pools, overlap


def prompt_states(run, texts: Sequence[str], layers: Sequence[int], desc: str, reduce: str = "last") -> torch.Tensor:
    """(N, L, D) float32 states of the chosen layers for each prompt: at the last prompt token (`last`), or the mean
    over all the prompt's tokens, chat template included (`mean`, CAST's pooling)."""
    rows = [encode(run.lm.chat, t).input_ids for t in texts]
    batch = int(run.cfg.classify.batch_size)
    if reduce == "last":
        return hidden_states(run.lm.model, rows, [[-1]] * len(rows), layers, batch, desc)[:, 0]
    if reduce != "mean":
        raise ValueError(f"reduce={reduce!r}; expected last or mean")
    out = []
    for i in range(0, len(rows), batch):  # every row's positions, padded to the chunk's longest by its last one
        chunk = rows[i : i + batch]
        width = max(len(r) for r in chunk)
        positions = [list(range(len(r))) + [len(r) - 1] * (width - len(r)) for r in chunk]
        states = hidden_states(run.lm.model, chunk, positions, layers, batch)  # (b, P, L, D)
        mask = torch.tensor([[j < len(r) for j in range(width)] for r in chunk], dtype=torch.float32)
        out.append((states * mask[:, :, None, None]).sum(1) / mask.sum(1)[:, None, None])
    return torch.cat(out)


def query_states(run, prompts: Sequence, name: str | None, layers: Sequence[int], reduce: str = "last") -> torch.Tensor:
    """`prompt_states` of a prompt set, the unsteered model's. A named set's are the `query_states` artifact (written
    once per model, set, layers and pooling, then read by every stage and run that asks for a method's per-query
    coefficients: CAST's condition, AdaSteer's coordinates); None computes them afresh (the cost stage times this)."""
    if name is None:
        return prompt_states(run, [p.text for p in prompts], layers, None, reduce)
    key = ("query_states", name, stable_hash([p.text for p in prompts]), tuple(layers), reduce)
    cache = run.methods_cache
    if key not in cache:
        cache[key] = run.artifact("query_states", name=name, prompts=list(prompts), layers=tuple(layers), reduce=reduce)
    return cache[key]


def layer_at(depth: float, num_layers: int) -> int:
    """The decoder layer at a fraction of the model's depth (AdaSteer's read layers: 8 and 13 of Llama's 32)."""
    return min(num_layers - 1, max(0, round(depth * num_layers)))
