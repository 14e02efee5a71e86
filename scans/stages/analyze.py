"""Stage `analyze`: σ(q) as a classifier, generation-free (Figures 4 and 5, Table 7's classification side).

- Figure 4: precision / recall / F1 on all 450 XSTest prompts (harmful = positive) of σ(q) with the headline SCANS
  row's 𝓛 and 𝒯, beside a keyword filter, a cross-validated logistic probe on last-token activations (layer: the
  last of 𝓛), and the projection on the refusal vector over 𝓛 with its threshold chosen on the validation split.
- Figure 5: per-layer cosine similarity of safe and unsafe XSTest prompts (mean, sd) and the per-layer AUROC.
- Table 7 (classification): for every 𝒯 on a fine grid (and the paper's and the headline's 𝒯), the share of each
  evaluation set that σ(q) (the headline row's 𝓛) classifies as harmful, and its XSTest F1, from the cached
  similarities alone.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from scans import methods
from scans.analysis import classifiers
from scans.analysis.classifiers import TABLE7_SETS
from scans.artifacts import read_json, stable_hash, write_json
from scans.data import HARMFUL, evaluation_sets
from scans.models import encode
from scans.stages import classify, extract, tune
from scans.stages.context import Run, prompts_hash
from scans.steering import harm_similarity, hidden_states, layer_similarities, transition
from scans.steering.classifier import prompt_and_response_states
from scans.steering.tuning import best_threshold

log = logging.getLogger(__name__)
STAGE = "analyze"
RESULT = "analysis.json"
XSTEST = ("xstest_safe", "xstest_unsafe")


def xstest(r: Run) -> dict:
    return evaluation_sets(list(XSTEST), None, r.cfg.data.limit_seed, r.anchors)


def validation(r: Run) -> dict:
    return evaluation_sets(list(r.cfg.tune.validation_sets), None, r.cfg.seed, None)


def key(r: Run) -> str:
    """What Figures 4-5 depend on (Table 7's side is recomputed from cached similarities on every call)."""
    return stable_hash(
        {
            "extract": r.extract_key,
            "method": methods.method_key(r, methods.headline(r)),
            "sets": {n: prompts_hash(p) for n, p in {**xstest(r), **validation(r)}.items()},
            "probe_folds": r.cfg.analysis.probe_folds,
            "response": r.cfg.classify.response,
            "format": 2,  # classifiers as a list
        }
    )


def last_token_states(r: Run, prompts) -> torch.Tensor:
    """(N, L, D) states at the end of the instruction, every layer."""
    encoded = [encode(r.lm.chat, p.text) for p in prompts]
    states = hidden_states(
        r.lm.model, [e.input_ids for e in encoded], [[-1]] * len(encoded), range(r.num_layers),
        r.cfg.classify.batch_size, "last-token states",
    )  # fmt: skip
    return states[:, 0]


def figure4(r: Run, method) -> dict:
    xs, val = xstest(r), validation(r)
    prompts = [p for ps in xs.values() for p in ps]
    harmful = [p.label == HARMFUL for p in prompts]
    ref = extract.load(r)
    vectors = ref["refusal_vectors"]
    # One "prompt + Sure" pass gives σ(q)'s similarities and the last-token states (the end of the instruction).
    states, end = prompt_and_response_states(
        r.lm.model, r.lm.chat, [p.text for p in prompts], r.cfg.classify.batch_size, r.cfg.classify.response,
        "XSTest states",
    )  # fmt: skip
    sims = layer_similarities(transition(states, end), ref["harm_direction"])
    val_prompts = [p for ps in val.values() for p in ps]
    val_harmful = [p.label == HARMFUL for p in val_prompts]
    val_states = last_token_states(r, val_prompts)
    layers = list(method.classify_layers)
    proj_threshold, _ = best_threshold(classifiers.projection_scores(val_states, vectors, layers), val_harmful)
    proj = classifiers.projection_scores(states, vectors, layers).numpy() >= proj_threshold
    sigma = harm_similarity(sims, layers).numpy() >= method.threshold
    probe_layer = layers[-1]
    probe = classifiers.probe_predictions(states[:, probe_layer], harmful, r.cfg.analysis.probe_folds, r.cfg.seed)
    return {
        "n": {"safe": len(xs["xstest_safe"]), "unsafe": len(xs["xstest_unsafe"])},
        "method": method.name,
        # A list, not a dict: the figure's order must survive the JSON artifact (whose keys are sorted).
        "classifiers": [
            {"classifier": name, **classifiers.scores(pred, harmful)}
            for name, pred in (
                (f"σ(q) ({method.name})", sigma),
                ("keyword filter", classifiers.keyword_filter([p.text for p in prompts])),
                (f"logistic probe (layer {probe_layer}, {r.cfg.analysis.probe_folds}-fold CV)", probe),
                ("refusal-vector projection", proj),
            )
        ],
        "figure5": classifiers.per_layer_summary(sims, harmful),
    }


def table7_classification(r: Run) -> list[dict]:
    head = methods.headline(r)
    sims = {n: harm_similarity(classify.similarities(r, n, r.eval_sets[n]), head.classify_layers) for n in TABLE7_SETS}
    fine = {float(t) for t in np.round(np.arange(0.50, 1.0001, 0.01), 2)}
    grid = sorted(fine | {float(t) for t in r.cfg.analysis.paper_thresholds} | {float(head.threshold)})
    xs_scores = torch.cat([sims["xstest_safe"], sims["xstest_unsafe"]]).numpy()
    xs_harmful = [False] * len(sims["xstest_safe"]) + [True] * len(sims["xstest_unsafe"])
    rows = []
    for t in grid:
        row = {"threshold": float(t)}
        row.update({n: 100.0 * float((s >= t).float().mean()) for n, s in sims.items()})
        row["xstest_f1"] = classifiers.scores(xs_scores >= t, xs_harmful)["f1"]
        rows.append(row)
    return rows


def figures(r: Run) -> dict:
    """Figures 4-5, computed once per key and then read from their artifact."""
    k = key(r)
    if r.store.is_complete(r.model_name, STAGE, k):
        return read_json(r.store.path(r.model_name, STAGE, k) / RESULT)
    result = figure4(r, methods.headline(r))
    with r.store.writing(r.model_name, STAGE, k, {"extract": r.extract_key}) as tmp:
        write_json(tmp / RESULT, result)
    log.info("analyze: %s", {c["classifier"]: round(c["f1"], 3) for c in result["classifiers"]})
    return result


def run(r: Run) -> dict:
    result = {
        **figures(r),
        "table7_classification": table7_classification(r),
        "table7_layers": list(methods.headline(r).classify_layers),
        "default_threshold_source": (
            f"tune stage: validation split {', '.join(r.cfg.tune.validation_sets)}" if r.cfg.steer.tuned
            else "model.hparams.threshold (the paper's value)"
        ),  # fmt: skip
    }
    if r.cfg.steer.tuned:
        result["tuned_threshold"] = tune.load(r)["threshold"]
    return result
