"""σ(q): the safety-conscious classifier of SCANS (Eqs. 2-5), batched.

One forward pass of "prompt + Sure" per query gives both ends of the transition: the state at the end of the
instruction (a_p; by causality identical to the last state of the prompt alone, so it is also the a^l(q) of
Eq. 1) and the state at the end of "Sure" (a_e).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from scans.models.chat import ChatFormat, encode
from scans.steering.activations import hidden_states
from scans.steering.vectors import harm_direction, layer_similarities, refusal_vectors, transition

POSITIVE_RESPONSE = "Sure"  # r_pos, paper §3.3


def prompt_and_response_states(
    model, chat: ChatFormat, queries: Sequence[str], batch_size: int, response: str = POSITIVE_RESPONSE, desc=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """(a_p, a_e), each (N, L, D) over all decoder layers, for `query + response`."""
    encoded = [encode(chat, q, response) for q in queries]
    n_layers = model.config.num_hidden_layers
    states = hidden_states(
        model,
        [e.input_ids for e in encoded],
        [[e.eoi_index, -1] for e in encoded],
        range(n_layers),
        batch_size,
        desc,
    )
    return states[:, 0], states[:, 1]


@dataclass
class HarmReference:
    """What `extract` produces from the anchors: refusal vectors v_r (Eq. 1) and harm direction d_harm (Eq. 3)."""

    vectors: torch.Tensor  # (L, D)
    direction: torch.Tensor  # (L, D)
    raw_vector_norms: torch.Tensor  # (L,), ||v_r^l|| before normalisation


def harm_reference(
    model,
    chat: ChatFormat,
    harmful: Sequence[str],
    benign: Sequence[str],
    batch_size: int = 16,
    normalize: bool = True,
    response: str = POSITIVE_RESPONSE,
) -> HarmReference:
    """Eqs. 1 and 3 from the anchor prompts: the same harmful anchors give v_r and d_harm (reference §4)."""
    harm_p, harm_e = prompt_and_response_states(model, chat, harmful, batch_size, response, "harmful anchors")
    benign_p, _ = prompt_and_response_states(model, chat, benign, batch_size, response, "benign anchors")
    raw = refusal_vectors(harm_p, benign_p, normalize=False)
    vectors = refusal_vectors(harm_p, benign_p, normalize=normalize)
    return HarmReference(vectors, harm_direction(transition(harm_p, harm_e)), raw.norm(dim=-1))


@dataclass
class Classification:
    layer_similarities: torch.Tensor  # (N, L) cos(a_t^l(q), d_harm^l) for every layer


def classify(
    model,
    chat: ChatFormat,
    queries: Sequence[str],
    direction: torch.Tensor,
    batch_size: int = 16,
    response: str = POSITIVE_RESPONSE,
    chunk: int = 256,
    desc: str | None = None,
) -> Classification:
    """Per-layer cosines for every query; Eq. 4 (mean over 𝓛) and Eq. 5 (threshold) are applied by the caller,
    so that a sweep over 𝓛 or 𝒯 needs no new forward pass. Queries are processed in chunks to bound memory."""
    sims = []
    for start in range(0, len(queries), chunk):
        a_p, a_e = prompt_and_response_states(model, chat, queries[start : start + chunk], batch_size, response, desc)
        sims.append(layer_similarities(transition(a_p, a_e), direction))
    return Classification(torch.cat(sims) if sims else torch.empty(0, direction.shape[0]))
