"""Stage `analyze`: σ(q) as a classifier, generation-free (Figures 4 and 5, Table 7's classification side).

- Figure 4: precision / recall / F1 and AUROC on all 450 XSTest prompts (harmful = positive) of σ(q) with the
  headline SCANS row's 𝓛 and 𝒯, a keyword filter, and every harm classifier x anchor set that the `tune` stage
  validated (scans.steering.harm), each with its validation-chosen 𝓛 and 𝒯. Nothing is fitted on XSTest.
- Figure 5: per-layer cosine similarity of safe and unsafe XSTest prompts (mean, sd), and the per-layer XSTest AUROC
  of every classifier and anchor set.
- Table 7 (classification): for every 𝒯 on a fine grid (and the paper's and the headline's 𝒯), the share of each
  evaluation set that σ(q) (the headline row's 𝓛) classifies as harmful, and its XSTest F1, from the cached
  similarities alone.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from scans import methods
from scans.analysis import classifiers, signs
from scans.artifacts import read_json, stable_hash, write_json
from scans.data import BENIGN, HARMFUL, evaluation_sets
from scans.judge import flags_by_label
from scans.methods import Default
from scans.methods.scans import Scans
from scans.stages import anchor, classify, sweep, tune
from scans.stages.context import Run, prompts_hash
from scans.stages.producers import produces
from scans.steering import harm_similarity
from scans.steering.tuning import behaviour, layer_auroc

log = logging.getLogger(__name__)
STAGE = "analyze"
RESULT = "analysis.json"
XSTEST = ("xstest_safe", "xstest_unsafe")


def xstest(r: Run) -> dict:
    """All of XSTest (250 + 200), or `analysis.xstest_limit` seeded prompts of each set (experiment=smoke)."""
    return evaluation_sets(list(XSTEST), r.cfg.analysis.get("xstest_limit"), r.cfg.data.limit_seed, r.anchors)


def key(r: Run) -> str:
    """What Figures 4-5 depend on (Table 7's side is recomputed from cached similarities on every call)."""
    return stable_hash(
        {
            "extract": r.extract_key,
            "method": methods.method_key(r, methods.headline(r)),
            "tune": tune.key(r) if r.cfg.steer.tuned else None,
            "sets": {n: prompts_hash(p) for n, p in xstest(r).items()},
            "response": r.cfg.classify.response,
            "format": 3,  # every validated classifier, with AUROC and per-layer AUROC on XSTest
        }
    )


def _entry(name: str, score, pred, harmful, **extra) -> dict:
    y = np.asarray(harmful, dtype=int)
    auroc = float(roc_auc_score(y, np.asarray(score, dtype=float)))
    return {"classifier": name, **classifiers.scores(pred, harmful), "auroc": auroc, **extra}


def figure4(r: Run, method) -> dict:
    """σ(q) of the headline row and a keyword filter, then every classifier the `tune` stage validated, each with its
    validation-chosen 𝓛 and 𝒯, on all of XSTest: precision, recall, F1 (harmful = positive), AUROC of the score and
    the per-layer AUROC (Figure 5)."""
    xs = xstest(r)
    prompts = [p for ps in xs.values() for p in ps]
    harmful = [p.label == HARMFUL for p in prompts]
    layers = list(method.classify_layers)
    # Per set, as the full rows of Table 2 (steer.full) read them: each set's states are computed once.
    sims = torch.cat([classify.similarities(r, n, ps) for n, ps in xs.items()])
    sigma = harm_similarity(sims, layers).numpy()
    keyword = classifiers.keyword_filter([p.text for p in prompts])
    entries = [
        _entry(f"σ(q) ({method.name})", sigma, sigma >= method.threshold, harmful, kind="transition", anchors="paper",
               layers=layers, threshold=float(method.threshold), row=True),
        _entry("keyword filter", keyword.astype(float), keyword, harmful, kind="keyword"),
    ]  # fmt: skip
    compared = tune.load(r).record["classifiers"] if r.cfg.steer.tuned else []
    best_of_kind = {}
    for c in compared:
        if c["kind"] not in best_of_kind or c["auroc"] > best_of_kind[c["kind"]]["auroc"]:
            best_of_kind[c["kind"]] = c
    for c in compared:
        per_layer = torch.cat([classify.scores(r, c["kind"], c["anchors"], n, ps) for n, ps in xs.items()])
        score = harm_similarity(per_layer, c["layers"]).numpy()
        entries.append(
            _entry(
                f"{c['kind']} ({c['anchors']} anchors)", score, score >= c["threshold"], harmful, kind=c["kind"],
                anchors=c["anchors"], layers=c["layers"], threshold=c["threshold"], validation_auroc=c["auroc"],
                validated_best=best_of_kind[c["kind"]] is c,
                per_layer_auroc=[float(a) for a in layer_auroc(per_layer, harmful)],
                validation_per_layer_auroc=c["per_layer_auroc"],
            )
        )  # fmt: skip
    return {
        "n": {"safe": len(xs["xstest_safe"]), "unsafe": len(xs["xstest_unsafe"])},
        "method": method.name,
        # A list, not a dict: the figure's order must survive the JSON artifact (whose keys are sorted).
        "classifiers": entries,
        "chosen": tune.load(r).record["classifier"] if r.cfg.steer.tuned else None,
        "figure5": classifiers.per_layer_summary(sims, harmful),
    }


def table7_classification(r: Run) -> list[dict]:
    head = methods.headline(r)
    names = dict.fromkeys([*sweep.sets(r), *XSTEST])
    sims = {n: harm_similarity(classify.similarities(r, n, r.eval_sets[n]), head.classify_layers) for n in names}
    fine = {float(t) for t in np.round(np.arange(0.50, 1.0001, 0.01), 2)}
    grid = sorted(fine | {float(t) for t in r.cfg.analysis.paper_thresholds} | {float(head.threshold)})
    xs_scores = torch.cat([sims["xstest_safe"], sims["xstest_unsafe"]]).numpy()
    xs_harmful = [False] * len(sims["xstest_safe"]) + [True] * len(sims["xstest_unsafe"])
    rows = []
    for t in grid:
        row = {"threshold": float(t)}
        row.update({n: 100.0 * float((sims[n] >= t).float().mean()) for n in sweep.sets(r)})
        row["xstest_f1"] = classifiers.scores(xs_scores >= t, xs_harmful)["f1"]
        rows.append(row)
    return rows


def _load(r: Run, path: Path) -> dict:
    return read_json(path / RESULT)


@produces("figures", STAGE, key, _load)
def _build(r: Run, tmp: Path) -> dict:
    result = figure4(r, methods.headline(r))
    write_json(tmp / RESULT, result)
    log.info("analyze: XSTest AUROC %s", {c["classifier"]: round(c["auroc"], 3) for c in result["classifiers"]})
    return {"extract": r.extract_key}


def figures(r: Run) -> dict:
    """Figures 4-5, computed once per key and then read from their artifact."""
    return r.artifact("figures")


def sign_effects(r: Run) -> dict:
    """Which way v pushes refusal on this model, on the validation generation subset (`tune.generation_subset`, never
    a reported prompt): every row steered by +α·v, then every row by -α·v, on each block of `analysis.signs.block`
    layers, and on the headline's steering layers under each policy of `analysis.signs.positions`; each setting's
    refusal per label (judge.fit), and the share of harmful prompts answered in a task's form (`signs.structured`).
    α is `analysis.signs.alpha`, or the headline's. The responses are cached like every generation; the rates are
    recomputed from them on every call."""
    s = r.cfg.analysis.signs
    if not s.block:
        return {}
    head = methods.headline(r)
    alpha = float(head.alpha if s.alpha is None else s.alpha)
    items = [p for prompts in tune.validation(r).values() for p in prompts]
    sizes = {lab: len(idx) for lab, idx in tune.generation_subset(r, items).items()}
    probes = [("block", layers, head.positions) for layers in signs.blocks(r.num_layers, int(s.block))]
    probes += [("positions", tuple(head.steer_layers), positions) for positions in s.positions]
    settings, meta = [(Default(), None)], [{"probe": None, "layers": None, "positions": None, "sign": 0}]
    for kind, layers, positions in probes:
        for sign in (1, -1):
            probe = Scans("sign probe", alpha, layers, head.classify_layers, head.threshold, positions=positions,
                          normalize=head.normalize, response=head.response)  # fmt: skip
            settings.append((probe, {lab: torch.full((n,), sign * alpha) for lab, n in sizes.items()}))
            meta.append({"probe": kind, "layers": list(layers), "positions": positions, "sign": sign})
    refusal_score = anchor.run(r)["layer_refusal_score"]
    rows, examples = [], []
    for m, responses in zip(meta, tune.validation_responses(r, settings)):
        rates = behaviour(flags_by_label(r.cfg.judge.fit, responses))
        row = {**m, "harmful": rates[HARMFUL], "benign": rates[BENIGN]}
        row["harmful_structured"] = float(np.mean([signs.structured(x["response"]) for x in responses[HARMFUL]]))
        if m["layers"] is not None:
            row["refusal_score"] = float(np.mean([refusal_score[i] for i in m["layers"]]))
        rows.append(row)
        if m["probe"] is None or (m["probe"] == "positions" and m["positions"] == head.positions):
            examples.append({**m, "responses": [x["response"] for x in responses[HARMFUL][: int(s.examples)]]})
    return {"alpha": alpha, "steer_layers": list(head.steer_layers), "method": head.name, "n": sizes,
            "normalize": head.normalize, "rows": rows, "examples": examples}  # fmt: skip


def run(r: Run) -> dict:
    result = {
        **figures(r),
        "table7_classification": table7_classification(r),
        "table7_layers": list(methods.headline(r).classify_layers),
        "default_threshold_source": (
            f"tune stage: validation split {', '.join(r.cfg.tune.validation_sets)}"
            if r.cfg.steer.tuned
            else "model.hparams.threshold (the paper's value)"
        ),  # fmt: skip
    }
    if r.cfg.steer.tuned:
        result["tuned_threshold"] = tune.load(r).threshold
    result["signs"] = sign_effects(r)
    return result
