"""Harm classifiers behind one interface (issue 12): σ(q)'s transition cosine and three others, on tensors.

Every classifier is fitted on anchor prompts (harmful and benign) and gives a per-layer score (N, L), higher meaning
more harmful; the caller averages a window of layers 𝓛 and thresholds it (Eqs. 4-5), both chosen on the validation
split. Four kinds:

- `transition` (the paper's σ(q), Eqs. 2-4): cos(a_p − a_e, d_harm), d_harm the harmful anchors' mean transition.
- `projection`: the last-token state's projection a_p · v̂ on the anchors' unit mean difference (Eq. 1's v̂).
- `probe`: a standardised logistic regression per layer on a_p, trained on the anchors; its logit.
- `gradsafe` (GradSafe-Zero, Xie et al. 2024, reference §6): the gradient of the loss of the compliant response
  ("Sure") on the model's weights, compared by cosine with the unsafe references' mean gradient on the rows and
  columns of the weight matrices that separate the unsafe references from the safe ones (their mean cosine
  differs by at least `gap`); the per-layer score is the mean cosine over that layer's critical slices.

The first three share one forward pass per prompt set (a_p, a_e at every layer: `Features`); GradSafe needs a
backward pass per batch of prompts of similar length.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import LogisticRegression
from tqdm.auto import tqdm

from scans.errors import ModelError
from scans.models.loading import input_device
from scans.steering.batching import length_sorted_batches
from scans.steering.vectors import harm_direction, layer_similarities, refusal_vectors, transition

KINDS = ("transition", "projection", "probe", "gradsafe")
STATE_KINDS = ("transition", "projection", "probe")  # scored from Features; gradsafe from gradients


@dataclass
class Features:
    """The shared forward pass of "prompt + response": states at the end of the instruction (a_p) and at the end of
    the response (a_e), (N, L, D) each."""

    prompt: torch.Tensor
    response: torch.Tensor

    def __len__(self) -> int:
        return self.prompt.shape[0]

    def subset(self, mask: Sequence[bool]) -> Features:
        m = torch.as_tensor(list(mask), dtype=torch.bool)
        return Features(self.prompt[m], self.response[m])


def fit(kind: str, anchors: Features, harmful: Sequence[bool], c: float = 0.1, seed: int = 0) -> dict:
    """The fitted state of a feature classifier (tensors only, so that it is saved as safetensors)."""
    h = torch.as_tensor(list(harmful), dtype=torch.bool)
    if h.all() or not h.any():
        raise ValueError(f"{kind}: anchors need both harmful and benign prompts")
    if kind == "transition":
        return {"direction": harm_direction(transition(anchors.prompt[h], anchors.response[h]))}
    if kind == "projection":
        return {"vector": refusal_vectors(anchors.prompt[h], anchors.prompt[~h], normalize=True)}
    if kind == "probe":
        x = anchors.prompt.double().numpy()
        y = h.numpy().astype(int)
        mean, scale = x.mean(0), x.std(0) + 1e-6  # (L, D)
        coef, intercept = np.zeros_like(mean), np.zeros(x.shape[1])
        for layer in range(x.shape[1]):
            model = LogisticRegression(C=c, max_iter=5000, random_state=seed)
            model.fit((x[:, layer] - mean[layer]) / scale[layer], y)
            coef[layer], intercept[layer] = model.coef_[0], model.intercept_[0]
        as_t = lambda a: torch.from_numpy(a).float()  # noqa: E731
        return {"mean": as_t(mean), "scale": as_t(scale), "coef": as_t(coef), "intercept": as_t(intercept)}
    raise ValueError(f"unknown feature classifier {kind!r}; known: {', '.join(STATE_KINDS)}")


def layer_scores(kind: str, state: dict, features: Features) -> torch.Tensor:
    """(N, L) harm scores of a fitted feature classifier, higher = more harmful."""
    if kind == "transition":
        return layer_similarities(transition(features.prompt, features.response), state["direction"])
    if kind == "projection":
        return (features.prompt.double() * state["vector"].double()[None]).sum(-1).float()
    if kind == "probe":
        z = (features.prompt.double() - state["mean"].double()[None]) / state["scale"].double()[None]
        return ((z * state["coef"].double()[None]).sum(-1) + state["intercept"].double()[None]).float()
    raise ValueError(f"unknown feature classifier {kind!r}; known: {', '.join(STATE_KINDS)}")


# --- GradSafe-Zero ---------------------------------------------------------------------------------------------

_LAYER = re.compile(r"\.layers\.(\d+)\.")


def _weights(model) -> list[tuple[str, int, torch.nn.Parameter]]:
    """(name, layer, parameter) of every 2-D weight matrix inside a decoder layer."""
    out = []
    for name, p in model.named_parameters():
        m = _LAYER.search(name)
        if m and p.ndim == 2:
            out.append((name, int(m.group(1)), p))
    return out


def response_gradients(model, rows: Sequence[int], eoi_index: int) -> list[torch.Tensor]:
    """Gradients of the mean cross-entropy of the response tokens (after `eoi_index`) on every decoder weight."""
    weights = [p for _, _, p in _weights(model)]
    device = input_device(model)
    ids = torch.tensor([list(rows)], device=device)
    labels = ids.clone()
    labels[:, : eoi_index + 1] = -100
    before = [w.requires_grad for w in weights]
    try:
        with torch.enable_grad():
            for w in weights:
                w.requires_grad_(True)
            loss = model(input_ids=ids, labels=labels).loss
            grads = torch.autograd.grad(loss, weights, allow_unused=True)
    finally:
        for w, flag in zip(weights, before):
            w.requires_grad_(flag)
    return [torch.zeros_like(w) if g is None else g.detach() for g, w in zip(grads, weights)]


def _slice_cos(g: torch.Tensor, ref: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Cosine of each row and of each column of g with those of ref."""
    g, ref = g.double(), ref.double()
    return F.cosine_similarity(g, ref, dim=1), F.cosine_similarity(g, ref, dim=0)


def gradsafe_reference(model, unsafe: Sequence, safe: Sequence, gap: float) -> dict:
    """The critical slices (rows/columns whose mean cosine with the unsafe references' mean gradient is at least `gap`
    higher for the unsafe references than for the safe ones) and that mean gradient on them, per weight matrix.
    `unsafe`/`safe`: (token ids, eoi_index) of "prompt + response"."""
    unsafe_grads = [response_gradients(model, ids, eoi) for ids, eoi in unsafe]
    safe_grads = [response_gradients(model, ids, eoi) for ids, eoi in safe]
    state: dict[str, torch.Tensor] = {}
    for i, (name, _, _) in enumerate(_weights(model)):
        ref = torch.stack([g[i] for g in unsafe_grads]).double().mean(0)
        cos_u = [_slice_cos(g[i], ref) for g in unsafe_grads]
        cos_s = [_slice_cos(g[i], ref) for g in safe_grads]
        rows = torch.stack([c[0] for c in cos_u]).mean(0) - torch.stack([c[0] for c in cos_s]).mean(0) >= gap
        cols = torch.stack([c[1] for c in cos_u]).mean(0) - torch.stack([c[1] for c in cos_s]).mean(0) >= gap
        state[f"{name}.rows"] = rows.nonzero().flatten().cpu()
        state[f"{name}.cols"] = cols.nonzero().flatten().cpu()
        state[f"{name}.reference_rows"] = ref[rows].float().cpu()  # (rows, in)
        state[f"{name}.reference_cols"] = ref[:, cols].float().cpu()  # (out, cols)
    return state


def critical_slices(state: dict) -> int:
    return sum(int(v.numel()) for k, v in state.items() if k.endswith((".rows", ".cols")))


def gradsafe_scores(
    model, queries: Sequence, states: Sequence[dict], num_layers: int, desc: str | None = None, batch_size: int = 16
) -> list[torch.Tensor]:
    """(N, L) for each reference state: per layer, the mean cosine of each query's gradient with the reference over
    the critical slices (0 for a layer without one). `queries`: (token ids, eoi_index) of "prompt + response".

    Batched, and without ever forming a weight's gradient: for a linear layer y = x Wᵀ, a query's gradient on W is
    δᵀx summed over its tokens (δ = ∂loss/∂y), so one backward pass of a batch of queries (the sum of their own
    losses: rows of a batch are independent) gives every δ and x, and a critical row r of W is δ[:, r]ᵀx, a
    critical column c is δᵀx[:, c]."""
    weights = _weights(model)
    modules = dict(model.named_modules())
    linears = [modules.get(name.removesuffix(".weight")) for name, _, _ in weights]
    out = [torch.zeros(len(queries), num_layers) for _ in states]
    odd = [name for m, (name, _, _) in zip(linears, weights) if not isinstance(m, torch.nn.Linear)]
    if odd:
        raise ModelError(f"GradSafe reads the gradients of linear layers; {odd[0]} is no nn.Linear weight")
    batches = list(length_sorted_batches([len(ids) for ids, _ in queries], batch_size))
    for idx in tqdm(batches, desc=desc, disable=desc is None, leave=False):
        xs, deltas = _linear_inputs_and_deltas(model, linears, [queries[i] for i in idx])
        grams: dict = {}  # per weight: x xᵀ and d dᵀ (B, T, T), shared by the states
        for state, scores in zip(states, out):
            sums, counts = torch.zeros(len(idx), num_layers, dtype=torch.float64), torch.zeros(num_layers)
            for i, (name, layer, _) in enumerate(weights):
                rows, cols = state[f"{name}.rows"], state[f"{name}.cols"]
                if (len(rows) or len(cols)) and i not in grams:
                    grams[i] = tuple((t @ t.transpose(1, 2)).double() for t in (xs[i], deltas[i]))
                refs = state[f"{name}.reference_rows"], state[f"{name}.reference_cols"]
                for cos in _slice_cosines(xs[i], deltas[i], rows, cols, *refs, *grams.get(i, (None, None))):
                    sums[:, layer] += torch.nan_to_num(cos).sum(1).cpu()
                counts[layer] += len(rows) + len(cols)
            scores[idx] = (sums / counts.clamp_min(1)).float()
    return out


def _slice_cosines(x, d, rows, cols, ref_rows, ref_cols, gram_x, gram_d) -> list[torch.Tensor]:
    """Cosines (B, slices) of each query's gradient rows `rows` and columns `cols` of one weight with the reference's,
    from the layer's inputs x (B, T, in) and output gradients d (B, T, out), the gradient being G = dᵀx per query.

    No G is formed: row r of G is d[:, r]ᵀx, so G_r·ref_r = Σ_t d[t, r] (x_t·ref_r) and |G_r|² = d[:, r]ᵀ(x xᵀ)d[:, r];
    column c likewise with the roles of x and d swapped (gram_x = x xᵀ, gram_d = d dᵀ, (B, T, T)). The reductions
    run in float64; eps 1e-8 as F.cosine_similarity."""
    out = []
    for side, index, ref in (("rows", rows, ref_rows), ("cols", cols, ref_cols)):
        if not len(index):
            continue
        index, ref = index.to(x.device), ref.to(x.device, x.dtype)
        if side == "rows":  # G_r = d[:, r]ᵀ x; ref (R, in)
            own, gram, projected = d[:, :, index], gram_x, x @ ref.T
        else:  # G_c = dᵀ x[:, c]; ref (out, C)
            own, gram, projected = x[:, :, index], gram_d, d @ ref
        own = own.double()
        dot = (own * projected.double()).sum(1)  # (B, n)
        norm = ((gram @ own) * own).sum(1).clamp_min(0).sqrt()
        ref_norm = ref.double().norm(dim=1 if side == "rows" else 0)
        out.append(dot / (norm * ref_norm).clamp_min(1e-8))
    return out


def _linear_inputs_and_deltas(model, linears, batch) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """For a batch of (token ids, eoi_index), right-padded: each linear layer's input x and the gradient δ of the
    sum of the queries' response losses on its output, (B, T, features) each."""
    device = input_device(model)
    width = max(len(ids) for ids, _ in batch)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    labels = torch.full((len(batch), width), -100, dtype=torch.long)
    for b, (row, eoi) in enumerate(batch):
        ids[b, : len(row)] = torch.tensor(row)
        mask[b, : len(row)] = 1
        labels[b, eoi + 1 : len(row)] = torch.tensor(row[eoi + 1 :])
    ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
    captured: list = [None] * len(linears)

    def hook(i):
        def save(module, args, output):
            captured[i] = (args[0].detach(), output)

        return save

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(linears)]
    try:
        with torch.enable_grad():
            embeds = model.get_input_embeddings()(ids).detach().requires_grad_(True)
            logits = model(inputs_embeds=embeds, attention_mask=mask).logits[:, :-1].float()
            targets = labels[:, 1:]
            token_loss = F.cross_entropy(logits.transpose(1, 2), targets, ignore_index=-100, reduction="none")
            keep = (targets != -100).float()
            loss = ((token_loss * keep).sum(1) / keep.sum(1).clamp_min(1)).sum()
            deltas = torch.autograd.grad(loss, [y for _, y in captured])
    finally:
        for h in handles:
            h.remove()
    return [x for x, _ in captured], [d.detach() for d in deltas]
