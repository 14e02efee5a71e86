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
from scans.config import number, parse_layers
from scans.data import BENIGN, HARMFUL, evaluation_sets
from scans.errors import ConfigError
from scans.judge import judge_flags
from scans.methods import Default
from scans.methods.scans import Scans, ScansClassifier
from scans.stages import classify, steer
from scans.stages.context import Run, prompts_hash
from scans.steering import harm_similarity
from scans.steering.tuning import best_threshold, best_window, layer_auroc, select_setting

log = logging.getLogger(__name__)
STAGE = "tune"
CHOICE = "tuned.json"
VERSION = 2  # 2: with the two-magnitude grid
METHOD = "SCANS (tuned)"
CLASSIFIER_KEYS = ("compare", "use", "anchor_sets", "anchor_size", "anchor_seed", "probe", "gradsafe")


def validation(r: Run) -> dict:
    """The validation split: each set less what the disjointness rule removes (an exact or near duplicate of a
    reported or held-back prompt: 11 + 6 JBB goals are AdvBench's, 10 + 3 OKTest held-out prompts OKTest's)."""
    from scans.data.overlap import rule

    block = rule(r.cfg, learned=False)
    sets = evaluation_sets(list(r.cfg.tune.validation_sets), r.cfg.tune.get("validation_limit"), r.cfg.seed, None)
    return {name: [prompts[i] for i in block.check([p.text for p in prompts]).kept] for name, prompts in sets.items()}


def key(r: Run) -> str:
    t = OmegaConf.to_container(r.cfg.tune, resolve=True)
    sets = {name: prompts_hash(p) for name, p in validation(r).items()}
    c = OmegaConf.to_container(r.cfg.classify, resolve=True)
    classifiers = {k: c[k] for k in CLASSIFIER_KEYS}
    return stable_hash(
        {
            "tune": t,
            "version": VERSION,
            "sets": sets,
            "classifiers": classifiers,
            "overlap": r.overlap_inputs,
            "extract": r.extract_key,
            "model": r.model_identity,
            "judge": r.fit_judge_identity,
            "positions": r.cfg.steer.positions,
            "normalize": bool(r.cfg.steer.normalize),
            "generation": OmegaConf.to_container(r.cfg.generation, resolve=True),
        }  # fmt: skip
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
    return validation_behaviours(r, [(method, coefficients)])[0]


def validation_behaviours(r: Run, settings: list[tuple]) -> list[dict]:
    """`validation_behaviour` of several (method, coefficients) settings, generated together where their
    interventions allow (a grid over α: `steer.respond_jobs`)."""
    return [behaviour(flags) for flags in validation_flags(r, settings)]


def validation_responses(r: Run, settings: list[tuple]) -> list[dict[str, list[dict]]]:
    """Per setting (method, coefficients per label or None), its responses on the validation generation subset, per
    label (`steer.respond_jobs` rows)."""
    items = [p for prompts in validation(r).values() for p in prompts]
    subsets = {f"validation-{lab}": [items[i] for i in idx] for lab, idx in generation_subset(r, items).items()}
    jobs = [(m, subsets, None if c is None else {f"validation-{lab}": v for lab, v in c.items()}) for m, c in settings]
    return [
        {name.removeprefix("validation-"): rows for name, rows in responses.items()}
        for responses in steer.respond_jobs(r, jobs, r.cfg.tune.max_new_tokens)
    ]


def validation_flags(r: Run, settings: list[tuple]) -> list[dict[str, np.ndarray]]:
    """Per setting, the judge's refusal flag of each prompt of the validation generation subset, per label."""
    return [refusal_flags(r, responses) for responses in validation_responses(r, settings)]


def refusal_flags(r: Run, responses: dict[str, list[dict]]) -> dict[str, np.ndarray]:
    """The `judge.fit` judge's flags of responses per label (with their prompts: a learned judge never judges an
    answer to a prompt it was trained on)."""
    return {
        lab: np.asarray(judge_flags(r.cfg.judge.fit, [x["response"] for x in rows], [x["prompt"] for x in rows]), bool)
        for lab, rows in responses.items()
    }


def behaviour(flags: dict[str, np.ndarray]) -> dict:
    """Refusal rates per label, and their balanced accuracy (harmful refusal and benign compliance)."""
    rates = {lab: float(np.mean(f)) for lab, f in flags.items()}
    rates["balanced_accuracy"] = 0.5 * (rates[HARMFUL] + 1.0 - rates[BENIGN])
    return rates


def two_magnitude_grid(grid: list[dict], flags: list[dict], default: dict, signs: dict[str, torch.Tensor]) -> list:
    """The SCANS (tuned, two magnitudes) grid: a magnitude for the rows σ(q) calls benign (-α_benign·v) and another,
    0 included, for those it calls harmful (+α_harmful·v), on each steering-layer range of the symmetric grid.

    No generation of its own: a prompt's response depends on its own coefficient only, so the validation flags of
    the symmetric grid (row i steered by σ_i·α) and of Default (α = 0) give every combination, prompt by prompt."""
    by_setting = {(tuple(g["steer_layers"]), g["alpha"]): f for g, f in zip(grid, flags)}
    out = []
    for layers in dict.fromkeys(tuple(g["steer_layers"]) for g in grid):
        alphas = sorted({0.0, *(a for ls, a in by_setting if ls == layers)})  # α 0 is Default's, once
        for benign in alphas:
            for harmful in alphas:
                pick = {a: by_setting[layers, a] if a else default for a in (benign, harmful)}
                combined = {
                    lab: np.where(signs[lab].numpy() > 0, pick[harmful][lab], pick[benign][lab]) for lab in signs
                }
                out.append({"alpha": benign, "alpha_harmful": harmful, "steer_layers": list(layers),
                            **behaviour(combined)})  # fmt: skip
    return out


def compare(r: Run, sets: dict) -> list[dict]:
    """Every classifier x anchor set of `classify.compare` on the validation split: its per-layer AUROC, the window 𝓛
    with the best AUROC and the threshold 𝒯 with the best balanced accuracy for it."""
    items = [p for prompts in sets.values() for p in prompts]
    harmful = [p.label == HARMFUL for p in items]
    out = []
    for kind, anchor_sets in r.cfg.classify.compare.items():
        for anchors in anchor_sets:
            scores = torch.cat([classify.scores(r, kind, anchors, name, prompts) for name, prompts in sets.items()])
            layers, auroc = best_window(scores, harmful, list(r.cfg.tune.classify_window_sizes))
            threshold, bacc = best_threshold(harm_similarity(scores, layers), harmful)
            out.append({
                "kind": kind, "anchors": anchors, "layers": layers, "threshold": threshold, "auroc": auroc,
                "balanced_accuracy": bacc, "per_layer_auroc": [float(a) for a in layer_auroc(scores, harmful)],
                "fit": classify.fitted(r, kind, anchors)["summary"],
            })  # fmt: skip
            log.info("tune: %s/%s validation AUROC %.3f on layers %s", kind, anchors, auroc, layers)
    return out


def pick(rows: list[dict], use: str) -> dict:
    """The classifier `use` names: `best` (highest validation AUROC, the first on ties), a kind (its best anchor
    set) or kind/anchors."""
    kind, _, anchors = use.partition("/")
    chosen = [c for c in rows if use == "best" or (c["kind"] == kind and (not anchors or c["anchors"] == anchors))]
    if not chosen:
        known = ", ".join(f"{c['kind']}/{c['anchors']}" for c in rows)
        raise ConfigError(f"classify.use={use!r} names no classifier of classify.compare ({known})")
    return max(chosen, key=lambda c: c["auroc"])


def run(r: Run) -> dict | None:
    if not r.cfg.steer.tuned:
        return None
    k = key(r)
    if r.store.is_complete(r.model_name, STAGE, k):
        return read_json(r.store.path(r.model_name, STAGE, k) / CHOICE)
    t = r.cfg.tune
    for a in t.alphas:  # checked before any model work (a model's own grid is model.grids, configs/tune)
        number(a, "tune.alphas[] (or model.grids.tune_alphas)", 0.0)
    where = "tune.steer_layers[] (or model.grids.tune_steer_layers)"
    layer_grid = [tuple(parse_layers(spec, r.num_layers, where)) for spec in t.steer_layers]
    sets = validation(r)
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

    def coefficients(method, sims: torch.Tensor) -> dict:
        # The subset's similarities are rows of the validation sets' cached ones: no second forward pass.
        return {lab: method.coefficients_from(sims[idx]) for lab, idx in subset.items()}

    default_flags = validation_flags(r, [(Default(), None)])[0]
    default = behaviour(default_flags)
    grid_methods = [
        Scans(
            METHOD, float(alpha), layers, tuple(cls_layers), threshold, tuned=True, positions=r.cfg.steer.positions,
            normalize=bool(r.cfg.steer.normalize), response=r.cfg.classify.response,
        )
        for layers in layer_grid
        for alpha in t.alphas
    ]  # fmt: skip
    grid_flags = validation_flags(r, [(m, coefficients(m, layer_sims)) for m in grid_methods])
    grid = [
        {"alpha": m.alpha, "steer_layers": list(m.steer_layers), **behaviour(f)}
        for m, f in zip(grid_methods, grid_flags)
    ]
    for row in grid:
        log.info("tune: %s", row)
    best, cap_met = select_setting(grid, default[HARMFUL], t.max_harmful_drop)
    signs = {lab: grid_methods[0].signs(layer_sims[idx]) for lab, idx in subset.items()}
    two = two_magnitude_grid(grid, grid_flags, default_flags, signs)
    two_best, two_cap_met = select_setting(two, default[HARMFUL], t.max_harmful_drop)

    # The same grid for the steering with the signs of the chosen classifier (the "SCANS + classifier" row).
    compared = compare(r, sets)
    chosen = pick(compared, r.cfg.classify.use)
    scores = torch.cat(
        [classify.scores(r, chosen["kind"], chosen["anchors"], name, prompts) for name, prompts in sets.items()]
    )
    cls_methods = [
        ScansClassifier(
            "SCANS + classifier", float(alpha), layers, tuple(chosen["layers"]), chosen["threshold"], tuned=True,
            positions=r.cfg.steer.positions, normalize=bool(r.cfg.steer.normalize), response=r.cfg.classify.response,
            classifier=r.cfg.classify.use, kind=chosen["kind"], anchors=chosen["anchors"],
        )
        for layers in layer_grid
        for alpha in t.alphas
    ]  # fmt: skip
    cls_settings = [(m, {lab: m.coefficients_from(scores[idx]) for lab, idx in subset.items()}) for m in cls_methods]
    cls_grid = [
        {"alpha": m.alpha, "steer_layers": list(m.steer_layers), **rates}
        for m, rates in zip(cls_methods, validation_behaviours(r, cls_settings))
    ]
    for row in cls_grid:
        log.info("tune: %s/%s %s", chosen["kind"], chosen["anchors"], row)
    cls_best, cls_cap_met = select_setting(cls_grid, default[HARMFUL], t.max_harmful_drop)
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
        "two_magnitudes": {
            **{k: two_best[k] for k in ("alpha", "alpha_harmful", "steer_layers")},
            "cap_met": two_cap_met,
            "grid": two,
        },
        "classifiers": compared,
        "classifier": {
            **{k: chosen[k] for k in ("kind", "anchors", "layers", "threshold", "auroc", "balanced_accuracy")},
            "use": r.cfg.classify.use,
            "alpha": cls_best["alpha"],
            "steer_layers": cls_best["steer_layers"],
            "cap_met": cls_cap_met,
            "grid": cls_grid,
        },
    }
    with r.store.writing(r.model_name, STAGE, k, {"key": k}) as tmp:
        write_json(tmp / CHOICE, choice)
    log.info("tune: chose α=%s, steering %s, 𝓛 %s, 𝒯 %.3f", best["alpha"], best["steer_layers"], cls_layers, threshold)
    log.info("tune: two magnitudes: α %s (benign), %s (harmful)", two_best["alpha"], two_best["alpha_harmful"])
    return choice


def load(r: Run) -> dict:
    path = r.require("tune", STAGE, key(r))
    return read_json(path / CHOICE)
