"""The SCANS equations on tensors: refusal vectors (Eq. 1), transitions (Eq. 2), harm direction (Eq. 3),
harm similarity (Eq. 4) and the steering sign (Eq. 5). Shapes: N prompts, L layers, D hidden size."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F


def refusal_vectors(harmful: torch.Tensor, benign: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """Eq. 1: v_r^l = mean_{Q-} a^l - mean_{Q+} a^l over last-token states, (N, L, D) -> (L, D).

    The authors' code divides each layer's vector by its L2 norm, so α multiplies a unit vector (reference §7 D1);
    `normalize=False` keeps the raw difference of means that the paper's equation writes.
    """
    vectors = harmful.double().mean(0) - benign.double().mean(0)
    if normalize:
        vectors = vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return vectors.float()


def transition(prompt_end: torch.Tensor, response_end: torch.Tensor) -> torch.Tensor:
    """Eq. 2: a_t = a_p - a_e, the state at the end of the instruction minus the state at the end of "Sure"."""
    return prompt_end - response_end


def harm_direction(harmful_transitions: torch.Tensor) -> torch.Tensor:
    """Eq. 3: d_harm^l = mean of the harmful anchors' transitions, (N, L, D) -> (L, D)."""
    return harmful_transitions.double().mean(0).float()


def layer_similarities(transitions: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    """cos(a_t^l(q), d_harm^l) for every layer, (N, L, D) x (L, D) -> (N, L); NaN (a zero vector) becomes 0."""
    cos = F.cosine_similarity(transitions.double(), direction.double()[None], dim=-1)
    return torch.nan_to_num(cos).float()


def harm_similarity(layer_sims: torch.Tensor, layers: Sequence[int]) -> torch.Tensor:
    """Eq. 4: s_q = mean over the classification layers 𝓛 of the per-layer cosines, (N, L) -> (N,)."""
    return layer_sims[:, list(layers)].mean(-1)


def steer_sign(similarity: torch.Tensor, threshold: float) -> torch.Tensor:
    """Eq. 5: σ(q) = -1 (benign: steer away from refusal) if s_q < 𝒯, else +1 (harmful: towards refusal)."""
    return torch.where(similarity < threshold, -1.0, 1.0)


def steering_vectors(mean_difference: torch.Tensor, normalize: bool) -> torch.Tensor:
    """The refusal vectors v^l that steering adds: Eq. 1's mean difference, unit-norm per layer (steer.normalize)."""
    if normalize:
        return mean_difference / mean_difference.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    return mean_difference
