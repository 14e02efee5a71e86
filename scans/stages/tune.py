"""Stage `tune`: the hyperparameters of the `SCANS (tuned)` row, chosen on the validation split only.

𝓛 and 𝒯 come from the cached per-layer similarities (no generation); α and the steering layers from a small grid
of greedy generations on a seeded validation subset, judged with the project's judge: the least benign refusal
among the settings that keep harmful refusal within `tune.max_harmful_drop` of the unsteered model's.
"""

from __future__ import annotations

import logging
import random

import numpy as np
import torch
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score

from scans import methods
from scans.artifacts import read_json, stable_hash, write_json
from scans.config import parse_layers
from scans.data import BENIGN, HARMFUL, evaluation_sets
from scans.judge import get_judge
from scans.methods import Default
from scans.methods.scans import Scans
from scans.stages import classify, steer
from scans.stages.context import Run, prompts_hash
from scans.steering import harm_similarity
from scans.steering.tuning import best_threshold, best_window, layer_auroc, select_setting

log = logging.getLogger(__name__)
STAGE = "tune"
CHOICE = "tuned.json"
METHOD = "SCANS (tuned)"


def _validation(r: Run) -> dict:
    return evaluation_sets(list(r.cfg.tune.validation_sets), None, r.cfg.seed, None)


def key(r: Run) -> str:
    t = OmegaConf.to_container(r.cfg.tune, resolve=True)
    sets = {name: prompts_hash(p) for name, p in _validation(r).items()}
    return stable_hash(
        {"tune": t, "sets": sets, "extract": r.extract_key, "model": r.model_identity, "judge": r.cfg.judge.name,
         "positions": r.cfg.steer.positions, "normalize": bool(r.cfg.steer.normalize),
         "generation": OmegaConf.to_container(r.cfg.generation, resolve=True)}  # fmt: skip
    )


def _subset(prompts, n: int, rng: random.Random):
    return prompts if len(prompts) <= n else [prompts[i] for i in sorted(rng.sample(range(len(prompts)), n))]


def generation_subset(r: Run, items: list) -> dict[str, list[int]]:
    """The seeded validation subset that settings are judged on by generating: indices into `items` per label."""
    rng = random.Random(r.cfg.tune.seed)
    rows = {lab: [i for i, p in enumerate(items) if p.label == lab] for lab in (HARMFUL, BENIGN)}
    return {lab: _subset(idx, r.cfg.tune.prompts_per_label, rng) for lab, idx in rows.items()}


def validation_behaviour(r: Run, method, coefficients=None) -> dict:
    """Refusal rates of a method on the validation generation subset, per label, and their balanced accuracy.
    `coefficients` (label -> per-prompt values) may be given when already at hand."""
    items = [p for prompts in _validation(r).values() for p in prompts]
    judge = get_judge(r.cfg.judge.name)
    rates = {}
    for lab, idx in generation_subset(r, items).items():
        coefs = None if coefficients is None else coefficients[lab]
        prompts = [items[i] for i in idx]
        responses = steer.respond(r, method, f"validation-{lab}", prompts, coefs, r.cfg.tune.max_new_tokens)
        rates[lab] = float(np.mean([judge(row["response"]) for row in responses]))
    rates["balanced_accuracy"] = 0.5 * (rates[HARMFUL] + 1.0 - rates[BENIGN])
    return rates


def run(r: Run) -> dict | None:
    if not r.cfg.steer.tuned:
        return None
    k = key(r)
    if r.store.is_complete(r.model_name, STAGE, k):
        return read_json(r.store.path(r.model_name, STAGE, k) / CHOICE)
    t = r.cfg.tune
    sets = _validation(r)
    layer_sims = torch.cat([classify.similarities(r, name, prompts) for name, prompts in sets.items()])
    items = [p for prompts in sets.values() for p in prompts]
    harmful = [p.label == HARMFUL for p in items]
    auroc = layer_auroc(layer_sims, harmful)
    cls_layers, cls_auroc = best_window(layer_sims, harmful, list(t.classify_window_sizes))
    threshold, cls_bacc = best_threshold(harm_similarity(layer_sims, cls_layers), harmful)
    paper = methods.load(r, methods.HEADLINE[False])
    paper_auroc = float(roc_auc_score(harmful, harm_similarity(layer_sims, paper.classify_layers).numpy()))

    # The α x steering-layer grid on a seeded subset of each label, with 𝓛 and 𝒯 fixed as chosen above.
    subset = generation_subset(r, items)

    def behaviour(method) -> dict:
        # The subset's similarities are rows of the validation sets' cached ones: no second forward pass.
        coefs = None
        if isinstance(method, Scans):
            coefs = {lab: method.signs(layer_sims[idx]).float() * method.alpha for lab, idx in subset.items()}
        return validation_behaviour(r, method, coefs)

    default = behaviour(Default())
    grid = []
    for spec in t.steer_layers:
        layers = tuple(parse_layers(spec, r.num_layers, "tune.steer_layers"))
        for alpha in t.alphas:
            m = Scans(
                METHOD, float(alpha), layers, tuple(cls_layers), threshold, True,
                r.cfg.steer.positions, bool(r.cfg.steer.normalize), r.cfg.classify.response,
            )  # fmt: skip
            grid.append({"alpha": float(alpha), "steer_layers": list(layers), **behaviour(m)})
            log.info("tune: α=%s layers=%s -> %s", alpha, spec, grid[-1])
    best, cap_met = select_setting(grid, default[HARMFUL], t.max_harmful_drop)
    choice = {
        "alpha": best["alpha"],
        "steer_layers": best["steer_layers"],
        "classify_layers": cls_layers,
        "threshold": threshold,
        "validation": {
            "sets": {n: len(p) for n, p in sets.items()},
            "classifier_auroc": cls_auroc,
            "classifier_balanced_accuracy": cls_bacc,
            "paper_recipe_auroc": paper_auroc,
            "per_layer_auroc": [float(a) for a in auroc],
            "generation_subset": {lab: len(idx) for lab, idx in subset.items()},
            "default_behaviour": default,
            "max_harmful_drop": t.max_harmful_drop,
            "cap_met": cap_met,
            "grid": grid,
        },
    }
    with r.store.writing(r.model_name, STAGE, k, {"key": k}) as tmp:
        write_json(tmp / CHOICE, choice)
    log.info("tune: chose α=%s, steering %s, 𝓛 %s, 𝒯 %.3f", best["alpha"], best["steer_layers"], cls_layers, threshold)
    return choice


def load(r: Run) -> dict:
    path = r.store.require(r.model_name, STAGE, key(r), "python -m scans stage=tune")
    return read_json(path / CHOICE)
