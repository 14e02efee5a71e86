"""DRO (Zheng et al. 2024, "On Prompt-Driven Safeguarding for LLMs"): a trainable soft safety prompt.

The soft prompt is a run of embeddings initialised from a human-written safety prompt (the released "short" one)
and inserted before every query, in place of that prompt's tokens. `prepare` trains it with the released loss on
DRO's 100 harmful and 100 harmless look-alike queries (after the disjointness rule):

- states: the final layer's (normed) hidden state at the end of the instruction; a 4-dimensional PCA of the states of
  every query with and without the human prompt;
- a refusal model (logistic regression on the PCA coordinates, target: the model complied, as the judge reads its
  greedy answer) and a harmfulness model (target: the query is harmless);
- loss = BCE(w_r·(z - z₀) , harmless) + 0.01·BCE(w_h·(z - z₀), harmless) + 0.001·mean((r - r₀)²), where z, r are the
  PCA coordinates and the residual outside the PCA space of the state under the soft prompt, and z₀, r₀ under the
  human prompt: harmful queries move towards refusal, harmless ones away from it, harmfulness is kept, and the rest
  of the representation is held in place.

The artifact is the soft prompt (safetensors, with the model it was trained on in its metadata).
"""

from __future__ import annotations

import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from scans.artifacts import load_tensors, save_tensors, stable_hash
from scans.data import dataset_key, load_prompts
from scans.errors import ModelError
from scans.judge import get_judge
from scans.methods.base import Intervention, Method, Row, Trained, check_disjoint, insert_encoded
from scans.models import encode
from scans.models.chat import tokenize
from scans.steering import DecodingConfig, generate
from scans.steering.batching import pad_left

log = logging.getLogger(__name__)
SOFT_PROMPT = "soft_prompt.safetensors"
# The released "short" safety prompt (LLM-Safeguard code/utils.py).
SHORT_PROMPT = (
    "You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe."
)


@dataclass(frozen=True)
class SoftPrompt(Intervention):
    """Placeholder ids inserted before every query, whose input embeddings are replaced by trained ones."""

    insertion: tuple[int, ...] = ()
    embeddings: torch.Tensor | None = None  # (S, D)

    def active(self, model, rows: list[Row]):
        return soft_prompt_hook(model, self.embeddings, rows)

    def untouched_prefix(self, rows: list[Row]) -> int:
        return min(r.query_start for r in rows)  # the soft span starts at the query

    def compactable(self) -> bool:
        return True  # the soft span is replaced on the prompt's pass only


class soft_prompt_hook:  # noqa: N801 - used as a context manager
    """Replace the input embeddings of each row's inserted span (columns offset + query_start ...) on the forward
    pass that holds the prompt (the prefill); one-token decoding steps are untouched."""

    def __init__(self, model, embeddings: torch.Tensor, rows: list[Row]):
        self.model, self.embeddings, self.rows = model, embeddings, rows

    def __enter__(self):
        emb = self.model.get_input_embeddings()
        soft = self.embeddings.to(emb.weight.device, emb.weight.dtype)
        n = soft.shape[0]
        starts = [r.offset + r.query_start for r in self.rows]  # the inserted span starts at the query start

        def hook(module, args, output):
            if output.shape[1] == 1:
                return output
            out = output.clone()
            for i, s in enumerate(starts):
                if s + n <= out.shape[1]:
                    out[i, s : s + n] = soft
            return out

        self.handle = emb.register_forward_hook(hook)
        # Nothing for the engine to tell when it drops finished rows (`select`): the span is replaced on the prompt's
        # pass only, before any row finishes.
        return None

    def __exit__(self, *exc):
        self.handle.remove()
        return False


@dataclass(frozen=True)
class DRO(Trained, Method):
    init_prompt: str = SHORT_PROMPT
    separator: str = "\n\n"
    harmful_set: str = "dro_harmful"
    harmless_set: str = "dro_harmless"
    pca_dim: int = 4
    harm_weight: float = 1e-2
    norm_weight: float = 1e-3
    learning_rate: float = 1e-3
    epochs: int = 3
    batch_size: int = 25
    answer_tokens: int = 16
    queries_per_set: int | None = None  # a seeded subset of each training set (smoke runs); None: all
    seed: int = 42
    soft_prompt: str | None = None  # a trained soft prompt (safetensors) to use instead of training one
    prefix = "dro"

    def training_key(self, run) -> str:
        s = self.settings()
        s.pop("soft_prompt")
        return stable_hash(
            {
                "model": run.model_identity,
                "settings": s,
                "judge": run.fit_judge_identity,
                "overlap": dict(run.cfg.overlap),
                "decoding": run.decoding_identity,
                "data": [dataset_key(self.harmful_set), dataset_key(self.harmless_set)],
            }  # fmt: skip
        )

    def given(self) -> str | None:
        return self.soft_prompt

    def path(self, run) -> Path:
        return Path(self.soft_prompt) if self.soft_prompt else self.artifact_dir(run) / SOFT_PROMPT

    def placeholder(self, run) -> list[int]:
        return tokenize(run.lm.tokenizer, self.init_prompt + self.separator)

    def build(self, run, tmp: Path) -> dict:
        """Train the soft prompt into `tmp` (safetensors, with the model it was trained on in its metadata)."""
        start = time.perf_counter()
        soft, summary = self._train(run)
        summary["train_seconds"] = time.perf_counter() - start
        meta = {"model": stable_hash(run.model_identity), "model_name": run.model_name,
                "hidden_size": str(soft.shape[1]), "tokens": str(soft.shape[0])}  # fmt: skip
        save_tensors(tmp / SOFT_PROMPT, {"soft_prompt": soft}, meta)
        log.info("DRO: soft prompt trained in %.0f s, loss %s", summary["train_seconds"], summary["losses"][-1])
        return summary

    def _states(self, run, rows: list[list[int]], soft: torch.Tensor | None, spans: list[int], grad: bool):
        """Final-layer states (normed) at each row's last token, with the soft prompt at the given span starts."""
        lm = run.lm
        batch = pad_left(rows, lm.device)
        embeds = lm.model.get_input_embeddings()(batch.input_ids)
        if soft is not None:
            n = soft.shape[0]
            parts = []
            for i, s in enumerate(spans):
                c = int(batch.pad_lengths[i]) + s
                parts.append(torch.cat([embeds[i, :c], soft.to(embeds.dtype), embeds[i, c + n :]]))
            embeds = torch.stack(parts)
        with torch.set_grad_enabled(grad):
            out = lm.model.get_decoder()(
                inputs_embeds=embeds, attention_mask=batch.attention_mask, position_ids=batch.position_ids
            ).last_hidden_state
        return out[:, -1].float().cpu()  # the PCA space and the loss live on the CPU (autograd follows)

    def _train(self, run) -> tuple[torch.Tensor, dict]:
        from sklearn.decomposition import PCA
        from sklearn.linear_model import LogisticRegression

        lm = run.lm
        rng = random.Random(self.seed)
        queries = []
        for name, target in ((self.harmful_set, 0.0), (self.harmless_set, 1.0)):
            texts = [p.text for p in load_prompts(name)]
            if self.queries_per_set is not None and self.queries_per_set < len(texts):
                texts = [texts[i] for i in sorted(rng.sample(range(len(texts)), self.queries_per_set))]
            queries += [(q, target) for q in texts]
        overlap = check_disjoint(run, [q for q, _ in queries], f"{self.harmful_set} + {self.harmless_set}")
        queries = [queries[i] for i in overlap.pop("kept_indices")]
        ids = self.placeholder(run)
        plain = [encode(lm.chat, q) for q, _ in queries]
        prompted = [insert_encoded(e, ids) for e in plain]
        spans = [e.query_start for e in plain]
        human = lm.model.get_input_embeddings().weight[ids].detach().clone().float()
        with torch.no_grad():
            states = torch.cat(
                [
                    torch.cat(
                        [
                            self._states(run, [e.input_ids for e in rows[i : i + 32]], None, [], False)
                            for i in range(0, len(rows), 32)
                        ]
                    )  # fmt: skip
                    for rows in (plain, prompted)
                ]
            )
        pca = PCA(self.pca_dim, random_state=42).fit(states.numpy())
        basis = torch.tensor(pca.components_, dtype=torch.float32)  # (k, D), orthonormal rows
        mean = torch.tensor(pca.mean_, dtype=torch.float32)

        def coords(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            centred = h - mean
            z = centred @ basis.T
            return z, centred - z @ basis

        # Refusal and harmfulness boundaries in the PCA space (targets: complied, harmless).
        judge = get_judge(run.cfg.judge.fit)
        dec = DecodingConfig(self.answer_tokens, run.cfg.generation.repetition_penalty, run.cfg.generation.batch_size)
        answers = generate(lm.model, lm.tokenizer, plain + prompted, dec, desc="DRO refusal labels")
        complied = [0.0 if judge(a) else 1.0 for a in answers]
        z_all = coords(states)[0].numpy()
        harmless = [y for _, y in queries] * 2
        models = {}
        for name, target in (("refusal", complied), ("harmfulness", harmless)):
            if len(set(target)) < 2:
                raise ModelError(f"DRO: the {name} boundary needs both outcomes; every query gave {target[0]}")
            fit = LogisticRegression(max_iter=1000).fit(z_all, target)
            models[name] = (torch.tensor(fit.coef_[0], dtype=torch.float32), float(fit.intercept_[0]))

        n = len(queries)
        z_base, r_base = coords(states[n:])
        y = torch.tensor([t for _, t in queries])
        soft = torch.nn.Parameter(human.clone())
        optimizer = torch.optim.AdamW([soft], lr=self.learning_rate)
        lm.model.requires_grad_(False)
        rng = random.Random(self.seed)  # the batches' order, as before a subset could be drawn
        losses = []
        order = list(range(n))
        bar = tqdm(total=self.epochs * math.ceil(n / self.batch_size), desc="DRO soft prompt", leave=False)
        for _ in range(self.epochs):
            rng.shuffle(order)
            for b in range(0, n, self.batch_size):
                bar.update()
                idx = order[b : b + self.batch_size]
                h = self._states(run, [prompted[i].input_ids for i in idx], soft, [spans[i] for i in idx], True)
                z, r = coords(h)
                w_r, _ = models["refusal"]
                w_h, _ = models["harmfulness"]
                refusal = F.binary_cross_entropy_with_logits((z - z_base[idx]) @ w_r, y[idx])
                harm = F.binary_cross_entropy_with_logits((z - z_base[idx]) @ w_h, y[idx])
                norm = ((r - r_base[idx]) ** 2).mean()
                loss = refusal + self.harm_weight * harm + self.norm_weight * norm
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_([soft], 1.0)
                optimizer.step()
                losses.append(float(loss.detach()))
                bar.set_postfix(loss=f"{losses[-1]:.3f}")
        bar.close()
        summary = {
            "queries": n, "overlap": overlap, "losses": losses, "refusal_labels": {"complied": sum(complied)},
            "pca_explained_variance": [float(v) for v in pca.explained_variance_ratio_],
            "placeholder_tokens": len(ids),
        }  # fmt: skip
        return soft.detach().cpu(), summary

    def intervention(self, run) -> SoftPrompt:
        return SoftPrompt(tuple(self.placeholder(run)), load_soft_prompt(run, self.path(run)))


def load_soft_prompt(run, path: Path) -> torch.Tensor:
    """The trained embeddings; one made for another model is one clear error."""
    from safetensors import safe_open

    if not Path(path).is_file():
        raise ModelError(f"DRO soft prompt not found at {path}; run stage=prepare")
    soft = load_tensors(path)["soft_prompt"]  # a damaged file is one line naming it and its rebuild command
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    hidden = run.lm.model.get_input_embeddings().weight.shape[1]
    if meta.get("model") != stable_hash(run.model_identity) or soft.shape[1] != hidden:
        raise ModelError(
            f"DRO soft prompt {path} was trained for {meta.get('model_name', 'another model')} (hidden size "
            f"{soft.shape[1]}), not for {run.model_name} (hidden size {hidden})"
        )
    return soft
