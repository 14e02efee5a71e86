"""Layer anchoring (paper Table 1): which layers' refusal vectors promote refusal tokens.

Per segment of layers (former / middle / latter), the first principal component of the segment's unit refusal
vectors, signed to agree with their mean, is read through the unembedding; per layer, a refusal score says how
strongly that layer's vector promotes a small lexicon of refusal words against the whole vocabulary.

The projection applies the model's final norm before the unembedding (a logit lens): the LM head only ever sees
normed states. The final norm's gain is applied to the direction as an elementwise scale, the RMS division is
dropped (it rescales every logit alike and changes no ranking).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from scans.errors import ConfigError

SEGMENTS = ("former", "middle", "latter")
# Words whose promotion marks a refusal; each counts with the first token of " word" and of "Word".
REFUSAL_LEXICON = (
    "sorry", "cannot", "unable", "reject", "refuse", "apologize", "unfortunately", "illegal", "unethical",
    "harmful", "inappropriate", "against", "not", "decline",
)  # fmt: skip


def segments(num_layers: int, bounds: Sequence[int] | None = None) -> dict[str, list[int]]:
    """Thirds by default (32 layers: 0-9 / 10-20 / 21-31, the paper's split), or explicit start indices of the
    middle and latter segments. A model of fewer than 3 layers leaves a segment empty."""
    if bounds is None:
        first = num_layers // 3
        bounds = (first, num_layers - (num_layers - first) // 2)
    if len(bounds) != 2 or not all(isinstance(b, int) for b in bounds):
        raise ConfigError(f"analysis.segments={list(bounds)}: expected [m, l], where middle and latter start")
    b1, b2 = bounds
    if not 0 <= b1 <= b2 <= num_layers:
        raise ConfigError(f"analysis.segments={[b1, b2]} do not split {num_layers} layers into three segments")
    return {"former": list(range(b1)), "middle": list(range(b1, b2)), "latter": list(range(b2, num_layers))}


def first_component(vectors: torch.Tensor) -> torch.Tensor:
    """First principal component of the rows of `vectors` (k, D), unit length, signed to agree with their mean."""
    x = vectors.double()
    centred = x - x.mean(0, keepdim=True)
    if x.shape[0] == 1 or centred.abs().max() == 0:
        pc = x.mean(0)
    else:
        pc = torch.linalg.svd(centred, full_matrices=False).Vh[0]
    if torch.dot(pc, x.mean(0)) < 0:
        pc = -pc
    return (pc / pc.norm().clamp_min(1e-12)).float()


def vocabulary_logits(direction: torch.Tensor, unembedding: torch.Tensor, norm_weight: torch.Tensor | None):
    """Logits of every token (on the CPU) for a residual-stream direction (D,), through the final norm's gain and the
    LM head. The direction (read from an artifact, on the CPU) and the norm's gain go to the head's device, which may
    differ from both under a `device_map`."""
    device = unembedding.device
    d = direction.to(device=device, dtype=torch.float32)
    if norm_weight is not None:
        d = d * norm_weight.to(device=device, dtype=torch.float32)
    return (unembedding.float() @ d).cpu()


def lexicon_ids(tokenizer, words: Sequence[str] = REFUSAL_LEXICON) -> list[int]:
    ids = set()
    for word in words:
        for form in (f" {word}", f" {word.capitalize()}", word.capitalize()):
            tokens = tokenizer(form, add_special_tokens=False)["input_ids"]
            if tokens:
                ids.add(tokens[0])
    return sorted(ids)


def refusal_score(logits: torch.Tensor, ids: Sequence[int]) -> float:
    """Mean z-score of the lexicon tokens' logits among all tokens: > 0 when the direction promotes refusal words."""
    z = (logits - logits.mean()) / logits.std().clamp_min(1e-12)
    return float(z[list(ids)].mean())


def top_tokens(logits: torch.Tensor, tokenizer, k: int = 10) -> list[str]:
    return [tokenizer.convert_ids_to_tokens(int(i)) for i in logits.topk(k).indices]
