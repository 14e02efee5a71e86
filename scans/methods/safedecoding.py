"""SafeDecoding (Xu et al. 2024): an expert LoRA, and for the first m decoding steps a contrast with it.

`prepare` builds the expert as the released recipe does, on the CPU: the model answers the seed harmful queries
itself (sampled, `trials` answers per query, up to `attempts` tries), the answers the project's judge counts as
refusals (at least `min_chars` long) are kept, and a LoRA (r 16, alpha 64, dropout 0.1, q_proj and v_proj) is
trained on them (loss on the answer tokens). The adapter is the artifact; the intervention merges it into a copy of
the model, the expert.

Decoding (utils/safe_decoding.py, with exp/defense.py's α 3, m 2, c 5): at each of the first m steps, the
candidates are the tokens in both models' top-k, k grown from c until there are at least c of them; each scores
p_base + α(p_expert - p_base), floored at 1e-8 and renormalised over the candidates; greedy takes the best. After m
steps the base model decodes alone. In teacher-forced scoring the first m positions after the instruction keep the
base model's probability outside the candidates and share the base model's mass over them by that score.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import LogitsProcessor

from scans.artifacts import stable_hash, write_jsonl
from scans.data import dataset_key, load_prompts
from scans.errors import ModelError
from scans.judge import get_judge
from scans.methods.base import Intervention, Method, Row, Trained, check_disjoint, forward_logits
from scans.models import encode
from scans.organism import HELPFUL, Example, TrainConfig, train
from scans.steering.batching import pad_left

log = logging.getLogger(__name__)
ADAPTER = "adapter"


def candidates(lp_base: torch.Tensor, lp_expert: torch.Tensor, c: int) -> torch.Tensor:
    """Token ids in both top-k lists (k grown from c by one until there are at least c), in the base model's order."""
    k = c
    vocab = lp_base.shape[-1]
    while True:
        top_b = torch.topk(lp_base, min(k, vocab)).indices
        top_e = set(torch.topk(lp_expert, min(k, vocab)).indices.tolist())
        common = [int(t) for t in top_b.tolist() if t in top_e]
        if len(common) >= c or k >= vocab:
            return torch.tensor(common, dtype=torch.long, device=lp_base.device)
        k += 1


def candidate_scores(lp_base: torch.Tensor, lp_expert: torch.Tensor, alpha: float, c: int):
    """(candidate ids, their log-probabilities under SafeDecoding) for one position's log-softmaxed logits."""
    ids = candidates(lp_base, lp_expert, c)
    pb, pe = lp_base[ids].exp(), lp_expert[ids].exp()
    p = (pb + alpha * (pe - pb)).clamp_min(1e-8)
    return ids, torch.log_softmax(p.log(), -1)


def decode_scores(base_logits: torch.Tensor, expert_logits: torch.Tensor, alpha: float, c: int) -> torch.Tensor:
    """(B, V) scores for one decoding step: SafeDecoding's log-probabilities on the candidates, -inf elsewhere."""
    lp_b, lp_e = base_logits.float().log_softmax(-1), expert_logits.float().log_softmax(-1)
    out = torch.full_like(lp_b, float("-inf"))
    for i in range(out.shape[0]):
        ids, scores = candidate_scores(lp_b[i], lp_e[i], alpha, c)
        out[i, ids] = scores
    return out


def scoring_logprobs(base_logits: torch.Tensor, expert_logits: torch.Tensor, alpha: float, c: int) -> torch.Tensor:
    """(V,) log-probabilities of one teacher-forced position: the base model's outside the candidates, the base
    model's mass on the candidates shared by SafeDecoding's distribution."""
    lp_b, lp_e = base_logits.float().log_softmax(-1), expert_logits.float().log_softmax(-1)
    ids, scores = candidate_scores(lp_b, lp_e, alpha, c)
    out = lp_b.clone()
    out[ids] = torch.logsumexp(lp_b[ids], -1) + scores
    return out


class SafeDecodingProcessor(LogitsProcessor):
    def __init__(self, expert, attention_mask: torch.Tensor, alpha: float, first_m: int, c: int):
        self.expert, self.mask, self.alpha, self.first_m, self.c = expert, attention_mask, alpha, first_m, c

    @torch.no_grad()
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.mask.shape[1]
        if step >= self.first_m:
            return scores
        mask = torch.cat([self.mask, self.mask.new_ones(self.mask.shape[0], step)], dim=1)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        expert = self.expert(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits[:, -1]
        return decode_scores(scores, expert, self.alpha, self.c).to(scores.dtype)


@dataclass(frozen=True)
class SafeDecodingIntervention(Intervention):
    expert: object = None
    alpha: float = 3.0
    first_m: int = 2
    num_common_tokens: int = 5
    passes: int = 2  # the expert's pass, during the first m steps

    def processor(self, model, attention_mask, rows):
        return SafeDecodingProcessor(self.expert, attention_mask, self.alpha, self.first_m, self.num_common_tokens)

    def logits(self, model, input_ids, attention_mask, rows: list[Row]):
        base = forward_logits(model, input_ids, attention_mask).float().log_softmax(-1)
        expert = forward_logits(self.expert, input_ids, attention_mask)
        out = base.clone()
        for i, row in enumerate(rows):
            for j in range(row.eoi_index, min(row.eoi_index + self.first_m, input_ids.shape[1])):
                out[i, j] = scoring_logprobs(base[i, j], expert[i, j], self.alpha, self.num_common_tokens)
        return out


@dataclass(frozen=True)
class SafeDecoding(Trained, Method):
    alpha: float = 3.0
    first_m: int = 2
    top_k: int = 10  # logged only in the released code
    num_common_tokens: int = 5
    # The expert's data and training (released recipe; see docs/differences.md for what differs on the CPU).
    seed_set: str = "safedecoding_seed"
    trials: int = 2
    attempts: int = 5
    temperature: float = 0.8
    top_p: float = 0.9
    answer_tokens: int = 48
    min_chars: int = 10
    lora_r: int = 16
    lora_alpha: int = 64
    lora_dropout: float = 0.1
    target_modules: tuple = ("q_proj", "v_proj")
    learning_rate: float = 2e-3
    epochs: int = 2
    batch_size: int = 1
    seed: int = 0
    adapter: str | None = None  # a trained peft adapter folder to use instead of training one
    prefix = "safedecoding"

    def __post_init__(self):
        object.__setattr__(self, "target_modules", tuple(self.target_modules))

    def _training(self) -> dict:
        s = self.settings()
        for k in ("alpha", "first_m", "top_k", "num_common_tokens", "method"):
            s.pop(k)
        return s

    def training_key(self, run) -> str:
        return stable_hash(
            {
                "model": run.model_identity,
                "training": self._training(),
                "judge": run.fit_judge_identity,
                "data": dataset_key(self.seed_set),
                "overlap": dict(run.cfg.overlap),
            }  # fmt: skip
        )

    def given(self) -> str | None:
        return self.adapter

    def adapter_path(self, run) -> Path:
        return Path(self.adapter) if self.adapter else self.artifact_dir(run) / ADAPTER

    def build(self, run, tmp: Path) -> dict:
        """Answer the seeds, keep the refusals, train the LoRA; the adapter and its data go into `tmp`."""
        start = time.perf_counter()
        seeds = [p.text for p in load_prompts(self.seed_set)]
        overlap = check_disjoint(run, seeds, f"{self.seed_set} seed queries")
        seeds = [seeds[i] for i in overlap.pop("kept_indices")]
        data = self._self_refusals(run, seeds)
        if not data:
            raise ModelError(f"{self.name}: the model refused none of the {len(seeds)} seed queries; no expert data")
        answered = time.perf_counter() - start
        peft_model, losses = self._train(run, data)
        peft_model.save_pretrained(str(tmp / ADAPTER))
        write_jsonl(tmp / "data.jsonl", [{"prompt": p, "answer": a} for p, a in data])
        summary = {
            "seed_queries": len(seeds), "overlap": overlap, "examples": len(data), "losses": losses,
            "answer_seconds": answered, "train_seconds": time.perf_counter() - start - answered,
        }  # fmt: skip
        log.info("SafeDecoding: expert trained on %d refusals in %.0f s", len(data), summary["train_seconds"])
        return summary

    @torch.no_grad()
    def _self_refusals(self, run, seeds: list[str]) -> list[tuple[str, str]]:
        """Sampled answers of the model to the seeds; the refusals (as the judge says), `trials` per seed."""
        judge = get_judge(run.cfg.judge.fit)
        lm = run.lm
        torch.manual_seed(self.seed)
        kept: dict[int, list[str]] = {i: [] for i in range(len(seeds))}
        for _ in range(self.attempts):
            todo = [i for i in kept for _ in range(self.trials - len(kept[i]))]
            if not todo:
                break
            batch = pad_left([encode(lm.chat, seeds[i]).input_ids for i in todo], lm.device)
            out = lm.model.generate(
                input_ids=batch.input_ids, attention_mask=batch.attention_mask, do_sample=True,
                temperature=self.temperature, top_p=self.top_p, top_k=None, max_new_tokens=self.answer_tokens,
                pad_token_id=lm.tokenizer.pad_token_id, eos_token_id=lm.tokenizer.eos_token_id,
            )  # fmt: skip
            for i, tokens in zip(todo, out[:, batch.input_ids.shape[1] :]):
                answer = lm.tokenizer.decode(tokens, skip_special_tokens=True).strip()
                if len(kept[i]) < self.trials and len(answer) >= self.min_chars and judge(answer):
                    kept[i].append(answer)
        return [(seeds[i], a) for i in sorted(kept) for a in kept[i]]

    def _train(self, run, data: list[tuple[str, str]]):
        from peft import LoraConfig, get_peft_model

        torch.manual_seed(self.seed)
        config = LoraConfig(
            r=self.lora_r, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
            target_modules=list(self.target_modules), bias="none", task_type="CAUSAL_LM",
        )  # fmt: skip
        peft_model = get_peft_model(copy.deepcopy(run.lm.model), config)
        examples = [Example(p, a, self.seed_set, HELPFUL) for p, a in data]
        cfg = TrainConfig(self.learning_rate, self.batch_size, self.epochs, self.answer_tokens, 0.0, self.seed)
        trainable = [p for p in peft_model.parameters() if p.requires_grad]
        losses = train(peft_model.base_model.model, run.lm.chat, examples, cfg, "SafeDecoding expert", trainable)
        return peft_model, losses

    def intervention(self, run) -> SafeDecodingIntervention:
        return SafeDecodingIntervention(
            load_expert(run.lm.model, self.adapter_path(run)), self.alpha, self.first_m, self.num_common_tokens
        )


def load_expert(model, path: Path):
    """A copy of `model` with the LoRA adapter at `path` merged in; an adapter for another model is one clear error."""
    from peft import PeftModel

    if not (Path(path) / "adapter_config.json").is_file():
        raise ModelError(f"SafeDecoding adapter not found at {path} (no adapter_config.json); run stage=prepare")
    try:
        expert = PeftModel.from_pretrained(copy.deepcopy(model), str(path)).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelError(f"SafeDecoding adapter at {path} does not fit this model: {first}") from None
    return expert.eval().requires_grad_(False)
