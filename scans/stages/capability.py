"""Stage `capability`: Table 3's inputs, MMLU, XSum and perplexity, for Default and the headline SCANS row, or for
every row of Table 2 with `capability.all_methods=true` (`make reproduce-all`).

Every part is an artifact keyed by the model, the method (its settings and upstream artifacts) and the part's own
config, so a rerun or a sweep over another stage's settings recomputes nothing here. σ(q) of each part's queries is
cached by the `classify` stage's artifact store like any evaluation set.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

from omegaconf import OmegaConf

from scans import methods as methods_lib
from scans.artifacts import read_json, read_jsonl, stable_hash, write_json, write_jsonl
from scans.capability import mmlu as mmlu_lib
from scans.capability import perplexity as ppl_lib
from scans.capability import xsum as xsum_lib
from scans.data import BENIGN, Prompt, dataset_key, load_table
from scans.methods import Default, Method
from scans.stages import steer
from scans.stages.context import Run
from scans.stages.producers import produces

log = logging.getLogger(__name__)
STAGE = "capability"
SCORES = "scores.json"
ROWS = "rows.jsonl"
CORPORA = ("wikitext2", "c4")


def _key(r: Run, part: str, method: Method, extra: dict | None = None) -> str:
    c = OmegaConf.to_container(r.cfg.capability[part], resolve=True)
    digest = stable_hash({"method": methods_lib.method_key(r, method), "config": c, **(extra or {})})
    return f"{part}-{type(method).__name__.lower()}-{digest}"


def _save(tmp: Path, method: Method, scores: dict, rows: list[dict]) -> dict:
    write_json(tmp / SCORES, scores)
    write_jsonl(tmp / ROWS, rows)
    log.info("capability: %s %s %s", tmp.name, method.name, scores)
    return {"method": method.name, "scores": scores}


def _load(r: Run, path: Path, **_) -> dict:
    return read_json(path / SCORES)


def _coefficients(r: Run, method: Method, name: str, queries: list[str]):
    return method.coefficients(r, [Prompt(q, BENIGN, name) for q in queries], name)


def mmlu_items(r: Run) -> list[mmlu_lib.Question]:
    c = r.cfg.capability.mmlu
    table = load_table("mmlu")
    if c.get("subjects"):
        table = table[table["subject"].isin(mmlu_lib.check_subjects(list(c.subjects)))]
    return mmlu_lib.questions(table, r.lm.tokenizer, c.shots, c.per_subject, c.seed, c.max_length)


def mmlu(r: Run, method: Method) -> dict:
    return r.artifact("mmlu", method=method)


def _xsum_key(r: Run, method: Method) -> str:
    return _xsum_inputs(r, method)[2]


def _mmlu_key(r: Run, method: Method) -> str:
    return _key(r, "mmlu", method, {"data": dataset_key("mmlu"), "protocol": mmlu_lib.PROTOCOL})


@produces("mmlu", STAGE, _mmlu_key, _load)
def _build_mmlu(r: Run, tmp: Path, method: Method) -> dict:
    c = r.cfg.capability.mmlu
    items = mmlu_items(r)
    lm = mmlu_lib.make_scans_lm(r.lm.model, r.lm.tokenizer, c.batch_size, c.max_length, mmlu_lib.needs_bos(r.lm.chat))
    coefs = _coefficients(r, method, "mmlu", [q.prompt for q in items])
    iv = methods_lib.intervention(r, method)
    preds = mmlu_lib.lm_eval_predictions(lm, items, iv, None if coefs is None else coefs.tolist())
    scores = {**mmlu_lib.accuracy_table(items, preds), "n": len(items)}
    if isinstance(method, Default) and c.crosscheck:
        picked = sorted(random.Random(c.seed).sample(range(len(items)), min(c.crosscheck, len(items))))
        direct = mmlu_lib.direct_predictions(lm, [items[i] for i in picked])
        agree = sum(d == preds[i] for d, i in zip(direct, picked))
        scores["crosscheck"] = {"n": len(picked), "agree": agree}
        if agree != len(picked):
            log.warning("MMLU: lm-eval and the direct argmax disagree on %d of %d", len(picked) - agree, len(picked))
    rows = [
        {"subject": q.subject, "index": q.index, "shots": q.shots, "answer": q.answer, "prediction": p}
        for q, p in zip(items, preds)
    ]
    return _save(tmp, method, scores, rows)


def _xsum_inputs(r: Run, method: Method):
    """(documents, prompts, artifact key) of a method's XSum run."""
    c = r.cfg.capability.xsum
    docs = xsum_lib.sample_documents(load_table("xsum"), c.documents, c.seed)
    prompts = [Prompt(xsum_lib.prompt(d), BENIGN, "xsum") for d in docs["document"]]
    extra = {"prompts": stable_hash([p.text for p in prompts]), "decoding": r.decoding_identity}
    return docs, prompts, _key(r, "xsum", method, extra)


def xsum(r: Run, method: Method) -> dict:
    return r.artifact("xsum", method=method)


@produces("xsum", STAGE, _xsum_key, _load)
def _build_xsum(r: Run, tmp: Path, method: Method) -> dict:
    c = r.cfg.capability.xsum
    docs, prompts, _ = _xsum_inputs(r, method)
    rows = steer.respond(r, method, "xsum", prompts, max_new_tokens=c.max_new_tokens)
    predictions = [row["response"] for row in rows]
    per_doc = xsum_lib.rouge_per_document(predictions, list(docs["summary"]))
    scores = {**{t: sum(v) / len(v) for t, v in per_doc.items()}, "n": len(prompts)}
    out = [
        {"id": str(i), "summary": s, "prediction": p, **{t: v[j] for t, v in per_doc.items()}}
        for j, (i, s, p) in enumerate(zip(docs["id"], docs["summary"], predictions))
    ]
    return _save(tmp, method, scores, out)


def windows(r: Run, corpus: str) -> list[ppl_lib.Window]:
    c = r.cfg.capability.perplexity
    table = load_table(corpus)
    if corpus == "wikitext2":
        return ppl_lib.wikitext_windows(r.lm.chat, list(table["text"]), c.window, c.windows)
    return ppl_lib.c4_windows(r.lm.chat, list(table["text"]), c.window, c.windows or 256, c.c4_seed)


def _perplexity_key(r: Run, method: Method, corpus: str) -> str:
    return _key(r, "perplexity", method, {"corpus": corpus, "data": dataset_key(corpus)})


def cached_perplexity(r: Run, method: Method, corpus: str) -> dict | None:
    """The perplexity artifact of a method if it exists; never loads the model."""
    k = _perplexity_key(r, method, corpus)
    return _load(r, r.store.path(r.model_name, STAGE, k)) if r.store.is_complete(r.model_name, STAGE, k) else None


def perplexity(r: Run, method: Method, corpus: str) -> dict:
    return r.artifact("perplexity", method=method, corpus=corpus)


@produces("perplexity", STAGE, _perplexity_key, _load)
def _build_perplexity(r: Run, tmp: Path, method: Method, corpus: str) -> dict:
    c = r.cfg.capability.perplexity
    ws = windows(r, corpus)
    coefs = _coefficients(r, method, f"ppl-{corpus}-{c.window}", [w.query for w in ws])
    nlls = ppl_lib.window_nlls(
        r.lm.model, ws, methods_lib.intervention(r, method), coefs, c.batch_size, f"{method.name} perplexity {corpus}"
    )
    rows = [{"nll": n, "coefficient": None if coefs is None else float(coefs[i])} for i, n in enumerate(nlls)]
    return _save(tmp, method, {"ppl": ppl_lib.perplexity(nlls), "n": len(ws), "window": c.window}, rows)


def items(r: Run, method: Method) -> dict[str, list[float]]:
    """Per-item scores behind a Table 3 row, in a fixed item order shared by every method: MMLU correctness (0/1,
    by category and over all questions), ROUGE per document, the negative log-likelihood per perplexity window."""
    out: dict[str, list[float]] = {}
    for corpus in CORPORA:
        out[f"{corpus}_nll"] = [row["nll"] for row in _rows(r, "perplexity", method=method, corpus=corpus)]
    xs = _rows(r, "xsum", method=method)
    for t in xsum_lib.ROUGE_TYPES:  # each document's score, stored by the xsum part
        out[t] = [x[t] for x in xs]
    mm = _rows(r, "mmlu", method=method)
    out["mmlu_avg"] = [float(q["prediction"] == q["answer"]) for q in mm]
    for category in mmlu_lib.CATEGORIES:
        out[f"mmlu_{category}"] = [
            float(q["prediction"] == q["answer"]) for q in mm if mmlu_lib.CATEGORY[q["subject"]] == category
        ]
    return out


def _rows(r: Run, name: str, **inputs) -> list[dict]:
    """The per-item rows of one capability artifact (built first when missing)."""
    r.artifact(name, **inputs)
    return read_jsonl(r.store.path(r.model_name, STAGE, r.key(name, **inputs)) / ROWS)


def table3_row(r: Run, method: Method) -> dict:
    row: dict = {"model": r.model_name, "method": method.name}
    for corpus in CORPORA:
        row[f"{corpus}_ppl"] = perplexity(r, method, corpus)["ppl"]
    row.update({k: v for k, v in xsum(r, method).items() if k != "n"})
    row.update({k: v for k, v in mmlu(r, method).items() if k.startswith("mmlu_")})
    return row


def methods(r: Run) -> list[Method]:
    """Default, the headline SCANS row and the rows of `capability.also` that the run has; every row of Table 2 with
    capability.all_methods=true."""
    if r.cfg.capability.get("all_methods"):
        return methods_lib.with_default(methods_lib.rows(r))
    if r.cfg.get("method") is not None:
        return [Default(), methods_lib.headline(r)]
    also = [methods_lib.load(r, n) for n in methods_lib.names(r) if n in (r.cfg.capability.get("also") or [])]
    return [Default(), methods_lib.headline(r), *also]


def complete(r: Run) -> bool:
    """Whether every artifact of Table 3 exists (never loads the model)."""
    for m in methods(r):
        keys = [_perplexity_key(r, m, corpus) for corpus in CORPORA] + [_xsum_inputs(r, m)[2], _mmlu_key(r, m)]
        if not all(r.store.is_complete(r.model_name, STAGE, k) for k in keys):
            return False
    return True


def run(r: Run) -> list[dict]:
    return [table3_row(r, m) for m in methods(r)]
