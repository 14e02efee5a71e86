"""Stage `align`: safety-tune the base model into the model organism, saved as a transformers folder.

Runs only for a model whose `source.kind` is `organism`; the folder is keyed by the base model and the `align`
config, and reused when it exists.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from omegaconf import OmegaConf

from scans.artifacts import read_json, read_jsonl, stable_hash, write_json, write_jsonl
from scans.data import dataset_key, load_prompts
from scans.data.overlap import Blocklist, blocked_sets, rule
from scans.judge import get_judge
from scans.models import encode, load_model
from scans.models.loading import resolve_device
from scans.organism import (
    HELPFUL,
    REFUSAL,
    Example,
    TrainConfig,
    first_sentence,
    lookalikes,
    native_autocast,
    refusal_pool,
    remove_overlap,
    sample,
    train,
    with_refusals,
)
from scans.stages.context import Run
from scans.steering import DecodingConfig, generate

log = logging.getLogger(__name__)
STAGE = "align"
MODEL_DIR = "model"
SUMMARY = "summary.json"
REFUSAL_SOURCE = "safety_tuned_llamas"


def is_organism(r: Run) -> bool:
    return r.cfg.model.source.kind == "organism"


def _align_settings(r: Run) -> dict:
    """`align` as plain data, with `train.autocast: auto` resolved for the device the base model loads on."""
    a = OmegaConf.to_container(r.cfg.align, resolve=True)
    if a["train"].get("autocast") == "auto":
        a["train"]["autocast"] = native_autocast(resolve_device(r.cfg.model.base.device))
    return a


def settings(r: Run) -> dict:
    a = _align_settings(r)
    blocked = _blocked(r)
    sources = [*a["harmful"], "alpaca", *blocked]
    base = r.cfg.model.base
    return {
        "base": OmegaConf.to_container(
            OmegaConf.create({k: base[k] for k in ("source", "dtype", "chat_format", "system_prompt")}), resolve=True
        ),
        "align": a,
        "blocked": blocked,
        "near_duplicate": float(r.cfg.overlap.near_duplicate),
        "judge": r.fit_judge_identity,
        "repetition_penalty": float(r.cfg.generation.repetition_penalty),  # the base model's answers
        "data": {name: dataset_key(name) for name in sources},
    }


def key(r: Run) -> str:
    return stable_hash(settings(r))


def _blocked(r: Run) -> list[str]:
    """The organism is trained on nothing the disjointness rule blocks, nor on the classifiers' anchor pools."""
    return [*blocked_sets(r.cfg), *[n for n in r.cfg.align.blocked if n not in blocked_sets(r.cfg)]]


def model_path(r: Run) -> Path:
    return r.store.path(r.model_name, STAGE, key(r)) / MODEL_DIR


def _harmful_examples(r: Run, blocked: Blocklist, rng: random.Random) -> tuple[list[Example], dict]:
    a = r.cfg.align
    judge = get_judge(r.cfg.judge.fit)
    report: dict[str, dict] = {}
    examples: list[Example] = []
    stl = load_prompts(REFUSAL_SOURCE)
    pool = refusal_pool([p.meta["output"] for p in stl], judge)
    for source, n in a.harmful.items():
        prompts = load_prompts(source)
        if source == "harmbench":
            prompts = [p for p in prompts if p.meta.get("FunctionalCategory") == "standard"]
        if source == REFUSAL_SOURCE:
            # Keep the source's own refusal (its first sentence), only where the judge counts it as a refusal.
            pairs = [(p, first_sentence(p.meta["output"])) for p in prompts]
            pairs = [(p, s) for p, s in pairs if s and judge(s)]
            kept, counts = remove_overlap(pairs, blocked, key=lambda pair: pair[0].text)
            chosen = sample(kept, n, rng)
            examples += [Example(p.text, s, source, REFUSAL) for p, s in chosen]
        else:
            kept, counts = remove_overlap(prompts, blocked)
            chosen = sample(kept, n, rng)
            examples += with_refusals([p.text for p in chosen], pool, source, rng)
        report[source] = {"available": len(prompts), **counts, "used": len(chosen)}
    return examples, {"sources": report, "refusal_pool": len(pool)}


def _benign_prompts(r: Run, blocked: Blocklist, rng: random.Random) -> tuple[list[str], list[str], dict]:
    """(look-alike prompts, other Alpaca prompts, report): the look-alikes are drawn first and kept out of the rest."""
    b = r.cfg.align.benign
    prompts, counts = remove_overlap(load_prompts("alpaca"), blocked)
    texts = [p.text for p in prompts]
    similar = sample(lookalikes(texts, b.lookalike_words), b.lookalike, rng)
    taken = set(similar)
    questions = [t for t in texts if t.endswith("?") and t not in taken]
    others = [t for t in texts if not t.endswith("?") and t not in taken]
    n_questions = round(b.alpaca * b.question_share)
    chosen = sample(questions, n_questions, rng) + sample(others, b.alpaca - n_questions, rng)
    available = {"available": len(prompts) + sum(counts.values()), **counts}
    report = {"alpaca": {**available, "used": len(chosen)}, "alpaca_lookalike": {**available, "used": len(similar)}}
    return similar, chosen, report


def self_answers(r: Run, base, prompts: list[str]) -> list[str]:
    """The base model's greedy answers to the benign prompts, cached on their own (training settings may change)."""
    b = r.cfg.align.benign
    decoding = DecodingConfig(b.answer_tokens, r.cfg.generation.repetition_penalty, b.batch_size)
    k = "answers-" + stable_hash({"base": settings(r)["base"], "prompts": prompts, "decoding": decoding.__dict__})
    path = r.store.path(r.model_name, STAGE, k) / "answers.jsonl"
    if r.store.is_complete(r.model_name, STAGE, k):
        return [row["answer"] for row in read_jsonl(path)]
    answers = generate(
        base.model, base.tokenizer, [encode(base.chat, q) for q in prompts], decoding, desc="self-answer benign prompts"
    )
    with r.store.writing(r.model_name, STAGE, k, {"n": len(prompts)}) as tmp:
        write_jsonl(tmp / path.name, [{"prompt": q, "answer": a} for q, a in zip(prompts, answers)])
    return answers


def run(r: Run) -> Path | None:
    if not is_organism(r):
        return None
    k = key(r)
    if r.store.is_complete(r.model_name, STAGE, k):
        log.info("align: reusing %s", r.store.path(r.model_name, STAGE, k))
        return model_path(r)
    a = r.cfg.align
    rng = random.Random(a.seed)
    blocked = rule(r.cfg, extra=a.blocked)
    harmful, harmful_report = _harmful_examples(r, blocked, rng)
    similar, plain, benign_report = _benign_prompts(r, blocked, rng)

    base = load_model(r.cfg.model.base, cache_dir=f"{r.cfg.paths.artifacts}/models")
    answers = self_answers(r, base, similar + plain)
    judge = get_judge(r.cfg.judge.fit)
    sources = ["alpaca_lookalike"] * len(similar) + ["alpaca"] * len(plain)
    # A helpful example must be helpful: an empty answer, or one the judge counts as a refusal, is dropped.
    rows = zip(similar + plain, answers, sources)
    benign = [Example(q, ans, src, HELPFUL) for q, ans, src in rows if ans and not judge(ans)]
    refused = sum(1 for ans in answers if ans and judge(ans))
    train_cfg = TrainConfig(**_align_settings(r)["train"], seed=a.seed)
    losses = train(base.model, base.chat, harmful + benign, train_cfg)

    summary = {
        "examples": {"refusal": len(harmful), "helpful": len(benign)},
        "removed_and_used": {**harmful_report["sources"], **benign_report},
        "refusal_pool": harmful_report["refusal_pool"],
        "helpful_refused_by_base": refused,
        "steps": len(losses),
        "first_loss": sum(losses[:10]) / max(1, len(losses[:10])),
        "last_loss": sum(losses[-10:]) / max(1, len(losses[-10:])),
    }
    with r.store.writing(r.model_name, STAGE, k, {"settings": settings(r), **summary}) as tmp:
        base.model.save_pretrained(tmp / MODEL_DIR)
        base.tokenizer.save_pretrained(tmp / MODEL_DIR)
        write_json(tmp / SUMMARY, summary)
        write_json(tmp / "losses.json", losses)
        write_jsonl(tmp / "examples.jsonl", [e.__dict__ for e in harmful + benign])
    log.info("align: %d steps, loss %.3f -> %.3f", len(losses), summary["first_loss"], summary["last_loss"])
    return model_path(r)


def load_summary(r: Run) -> dict:
    return read_json(r.require("align", STAGE, key(r)) / SUMMARY)
