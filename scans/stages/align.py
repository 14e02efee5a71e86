"""Stage `align`: safety-tune the base model into the model organism, saved as a transformers folder.

Runs only for a model whose `source.kind` is `organism`; the folder is keyed by the base model and the `align`
config, and reused when it exists.
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from pathlib import Path

from omegaconf import OmegaConf, open_dict

from scans.artifacts import read_json, read_jsonl, stable_hash, write_json, write_jsonl
from scans.data import dataset_key, load_prompts
from scans.data.overlap import Blocklist, blocked_sets, cleared_sets, rule
from scans.judge import get_judge
from scans.models import encode, load_model, sources
from scans.models.precision import resolve_device
from scans.organism import (
    HELPFUL,
    PRECISIONS,
    REFUSAL,
    Example,
    TrainConfig,
    first_sentence,
    form_matched,
    kept_where,
    lookalikes,
    native_autocast,
    refusal_pool,
    remove_overlap,
    sample,
    train,
    with_refusals,
)
from scans.stages.context import Run
from scans.stages.producers import produces
from scans.steering import DecodingConfig, generate

log = logging.getLogger(__name__)
STAGE = "align"
MODEL_DIR = "model"
SUMMARY = "summary.json"
ANSWERS = "answers.jsonl"
REFUSAL_SOURCE = "safety_tuned_llamas"


def is_organism(r: Run) -> bool:
    return r.cfg.model.source.kind == "organism"


def _align_settings(r: Run) -> dict:
    """`align` as plain data, with `train.autocast: auto` resolved for the device the base model loads on, less what
    only the report reads: the validation profile (what it keeps off the training data is in `settings`' blocked
    sets) and the precisions compared."""
    a = OmegaConf.to_container(r.cfg.align, resolve=True)
    a.pop("validation", None)
    a.pop("precisions", None)
    if a["train"].get("autocast") == "auto":
        a["train"]["autocast"] = native_autocast(resolve_device(r.cfg.model.base.device))
    return a


def settings(r: Run) -> dict:
    a = _align_settings(r)
    blocked = _blocked(r)
    data_sources = [*a["harmful"], "alpaca", *blocked]
    base = r.cfg.model.base
    described = OmegaConf.to_container(
        OmegaConf.create({k: base[k] for k in ("dtype", "chat_format", "system_prompt")}), resolve=True
    )
    return {
        "base": {"source": sources.get(base.source.kind).identity(base), **described},
        "align": a,
        "blocked": blocked,
        "near_duplicate": float(r.cfg.overlap.near_duplicate),
        "judge": r.fit_judge_identity,
        "repetition_penalty": float(r.cfg.generation.repetition_penalty),  # the base model's answers
        "data": {name: dataset_key(name) for name in data_sources},
    }


def key(r: Run) -> str:
    return stable_hash(settings(r))


def _blocked(r: Run) -> list[str]:
    """The organism is trained on nothing the disjointness rule blocks, nor on the classifiers' anchor pools."""
    return [*blocked_sets(r.cfg), *[n for n in r.cfg.align.blocked if n not in blocked_sets(r.cfg)]]


def model_path(r: Run) -> Path:
    """The organism's transformers folder, built first when missing."""
    return r.artifact("organism")


def _harmful_examples(
    r: Run, blocked: Blocklist, rng: random.Random
) -> tuple[list[Example], dict, dict[str, list[tuple[str, str | None]]]]:
    """(refusal examples, report, what is left): each source's unused prompts, after the rule, with the source's own
    refusal where it has one (None: one is drawn from the pool), for `align.mined`."""
    a = r.cfg.align
    judge = get_judge(r.cfg.judge.fit)
    report: dict[str, dict] = {}
    examples: list[Example] = []
    left: dict[str, list[tuple[str, str | None]]] = {}
    stl = load_prompts(REFUSAL_SOURCE)
    pool = refusal_pool([p.meta["output"] for p in stl], judge)
    for source, n in a.harmful.items():
        prompts = kept_where(load_prompts(source), a.where.get(source, {}))
        if source == REFUSAL_SOURCE:
            # Keep the source's own refusal (its first sentence), only where the judge counts it as a refusal.
            pairs = [(p.text, first_sentence(p.meta["output"])) for p in prompts]
            pairs = [(q, s) for q, s in pairs if s and judge(s)]
        else:
            pairs = [(p.text, None) for p in prompts]
        kept, counts = remove_overlap(pairs, blocked, key=lambda pair: pair[0])
        chosen = sample(kept, n, rng)
        if source == REFUSAL_SOURCE:
            examples += [Example(q, s, source, REFUSAL) for q, s in chosen]
        else:
            examples += with_refusals([q for q, _ in chosen], pool, source, rng)
        taken = set(chosen)
        left[source] = [pair for pair in kept if pair not in taken]
        report[source] = {"available": len(prompts), **counts, "used": len(chosen)}
    return examples, {"sources": report, "refusal_pool": pool}, left


def _benign_prompts(
    r: Run, blocked: Blocklist, rng: random.Random, harmful: list[str]
) -> tuple[list[str], list[str], dict, list[str]]:
    """(look-alike prompts, other Alpaca prompts, report, the Alpaca prompts left): the look-alikes are drawn first and
    kept out of the rest; with `benign.form_matched`, one more Alpaca prompt per harmful prompt of the same form
    (`form_matched`)."""
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
    if b.get("form_matched"):
        taken |= set(chosen)
        matched = form_matched([t for t in texts if t not in taken], harmful, rng)
        chosen += matched
        report["alpaca_form_matched"] = {**available, "used": len(matched)}
    taken |= set(chosen)
    return similar, chosen, report, [t for t in texts if t not in taken]


def _decoding(r: Run) -> DecodingConfig:
    b = r.cfg.align.benign
    return DecodingConfig(b.answer_tokens, r.cfg.generation.repetition_penalty, b.batch_size)


def first_pass(r: Run) -> Run:
    """The organism of this config without hard examples (no `align.mined`: its key is that of a config that never
    set it), run in fp32 whatever the CPU, so that what it refuses, and so the training data, is the same on every
    CPU."""
    cfg = r.cfg.copy()
    with open_dict(cfg):
        cfg.align.pop("mined", None)
        cfg.model.dtype = "float32"
    return Run(cfg)


def _mined(
    r: Run, left: dict[str, list[tuple[str, str | None]]], pool: list[str]
) -> tuple[list[str], list[Example], dict]:
    """Hard examples (`align.mined`), found by the first pass's greedy first `probe_tokens` tokens, judged by the fit
    judge: of `alpaca` more Alpaca prompts (seeded, none already drawn), those it refuses (they get the base model's
    answers); of `harmful[source]` more prompts of each harmful source, those it answers (they get a refusal, the
    source's own or one drawn from the pool)."""
    m = r.cfg.align.mined
    rng = random.Random(f"{r.cfg.align.seed}-mined")
    wanted = {"alpaca": m.get("alpaca", 0), **m.get("harmful", {})}
    probes = {source: sample(left[source], n, rng) for source, n in wanted.items()}
    texts = [q for pairs in probes.values() for q, _ in pairs]
    lm = first_pass(r).lm
    decoding = DecodingConfig(m.probe_tokens, r.cfg.generation.repetition_penalty, r.cfg.align.benign.batch_size)
    said = iter(generate(lm.model, lm.tokenizer, [encode(lm.chat, q) for q in texts], decoding,
                         desc="the first pass's answers"))  # fmt: skip
    judge = get_judge(r.cfg.judge.fit)
    refused = {source: [judge(next(said)) for _ in pairs] for source, pairs in probes.items()}
    alpaca = [q for (q, _), no in zip(probes["alpaca"], refused["alpaca"]) if no]
    refusals = [
        Example(q, s or rng.choice(pool), f"{source}_mined", REFUSAL)
        for source, pairs in probes.items() if source != "alpaca"
        for (q, s), no in zip(pairs, refused[source]) if not no
    ]  # fmt: skip
    report = {
        f"{source}_mined": {"probed": len(pairs), "refused_by_first_pass": sum(refused[source])}
        for source, pairs in probes.items()
    }
    return alpaca, refusals, report


def _answers_key(r: Run, prompts: list[str], **_) -> str:
    return "answers-" + stable_hash(
        {"base": settings(r)["base"], "prompts": prompts, "decoding": _decoding(r).__dict__}
    )


def _load_answers(r: Run, path: Path, **_) -> list[str]:
    return [row["answer"] for row in read_jsonl(path / ANSWERS)]


@produces("base_answers", STAGE, _answers_key, _load_answers)
def _build_answers(r: Run, tmp: Path, prompts: list[str], base) -> dict:
    answers = generate(
        base.model, base.tokenizer, [encode(base.chat, q) for q in prompts], _decoding(r),
        desc="self-answer benign prompts",
    )  # fmt: skip
    write_jsonl(tmp / ANSWERS, [{"prompt": q, "answer": a} for q, a in zip(prompts, answers)])
    return {"n": len(prompts)}


def self_answers(r: Run, base, prompts: list[str]) -> list[str]:
    """The base model's greedy answers to the benign prompts, cached on their own (training settings may change)."""
    return r.artifact("base_answers", prompts=prompts, base=base)


def _key(r: Run) -> str:
    return key(r)


def _load(r: Run, path: Path) -> Path:
    return path / MODEL_DIR


@produces("organism", STAGE, _key, _load)
def build(r: Run, tmp: Path) -> dict:
    """Safety-tune the base model into `tmp/model` (see the module's docstring)."""
    a = r.cfg.align
    rng = random.Random(a.seed)
    blocked = rule(r.cfg, extra=a.blocked)
    harmful, harmful_report, left = _harmful_examples(r, blocked, rng)
    similar, plain, benign_report, alpaca_left = _benign_prompts(r, blocked, rng, [e.prompt for e in harmful])
    mined, mined_report = [], {}
    if r.cfg.align.get("mined"):
        left["alpaca"] = [(q, None) for q in alpaca_left]
        mined, hard, mined_report = _mined(r, left, harmful_report["refusal_pool"])
        harmful += hard
        r.release_other_models()

    base = load_model(r.cfg.model.base, cache_dir=r.model_cache)
    answers = self_answers(r, base, similar + plain) + (self_answers(r, base, mined) if mined else [])
    judge = get_judge(r.cfg.judge.fit)
    sources_of = ["alpaca_lookalike"] * len(similar) + ["alpaca"] * len(plain) + ["alpaca_mined"] * len(mined)
    # A helpful example must be helpful: an empty answer, or one the judge counts as a refusal, is dropped.
    rows = zip(similar + plain + mined, answers, sources_of)
    benign = [Example(q, ans, src, HELPFUL) for q, ans, src in rows if ans and not judge(ans)]
    refused = sum(1 for ans in answers if ans and judge(ans))
    used = Counter(e.source for e in harmful + benign)
    benign_report |= {source: {**row, "used": used[source]} for source, row in mined_report.items()}
    train_cfg = TrainConfig(**_align_settings(r)["train"], seed=a.seed)
    losses = train(base.model, base.chat, harmful + benign, train_cfg)

    summary = {
        "examples": {"refusal": len(harmful), "helpful": len(benign)},
        "removed_and_used": {**harmful_report["sources"], **benign_report},
        "refusal_pool": len(harmful_report["refusal_pool"]),
        "helpful_refused_by_base": refused,
        "steps": len(losses),
        "first_loss": sum(losses[:10]) / max(1, len(losses[:10])),
        "last_loss": sum(losses[-10:]) / max(1, len(losses[-10:])),
    }
    base.model.save_pretrained(tmp / MODEL_DIR)
    base.tokenizer.save_pretrained(tmp / MODEL_DIR)
    write_json(tmp / SUMMARY, summary)
    write_json(tmp / "losses.json", losses)
    write_jsonl(tmp / "examples.jsonl", [e.__dict__ for e in harmful + benign])
    log.info("align: %d steps, loss %.3f -> %.3f", len(losses), summary["first_loss"], summary["last_loss"])
    return {"settings": settings(r), **summary}


def run(r: Run) -> Path | None:
    return r.artifact("organism") if is_organism(r) else None


class Organism:
    """`model.source.kind: organism`: the base model (`model.base`) safety-tuned by this stage. Its identity is the
    align key, so every artifact of the organism follows its training data and settings; materializing it builds it
    when missing. A kind that needs the run, so `Run.source` binds it first."""

    def __init__(self, run: Run | None = None):
        self.run = run

    def bind(self, run: Run) -> Organism:
        return Organism(run)

    def identity(self, cfg) -> dict:
        return {**OmegaConf.to_container(cfg.source, resolve=True), "align": key(self.run)}

    def materialize(self, cfg, cache_dir) -> sources.Location:
        return sources.Location(str(model_path(self.run)))

    def num_layers(self, cfg, cache_dir) -> int:
        return sources.get(cfg.base.source.kind).num_layers(cfg.base, cache_dir)


sources.register("organism", Organism())


def precision(r: Run) -> str:
    """The precision the organism is trained in, in words: "bf16 autocast" or "fp32"."""
    return PRECISIONS[_align_settings(r)["train"]["autocast"]]


def builds(r: Run) -> dict[str, Run]:
    """The organism trained in each precision of `align.precisions` (its name -> run), this run's own first: the
    report gives each one's Default profile, and says whether they differ."""
    out = {precision(r): r}
    for autocast in r.cfg.align.precisions:
        if PRECISIONS[autocast] not in out:
            cfg = r.cfg.copy()
            with open_dict(cfg):
                cfg.align.train.autocast = autocast
            out[PRECISIONS[autocast]] = Run(cfg)
    return out


def validation(r: Run) -> dict:
    """The organism's validation sets (`align.validation`), less what the disjointness rule removes."""
    return cleared_sets(r.cfg, list(r.cfg.align.validation.sets), r.cfg.align.validation.limit)


def load_summary(r: Run) -> dict:
    return read_json(model_path(r).parent / SUMMARY)
