"""Stage `tune`: the hyperparameters of the `SCANS (tuned)` row, chosen on the validation split only.

𝓛 and 𝒯 come from the cached per-layer similarities (no generation); α and the steering layers from a small grid
of greedy generations on a seeded validation subset, judged with the project's judge: the least benign refusal
among the settings that keep harmful refusal within `tune.max_harmful_drop` of the unsteered model's.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from sklearn.metrics import roc_auc_score

from scans import methods
from scans.artifacts import read_json, stable_hash, write_json
from scans.config import number, parse_layers
from scans.data import BENIGN, HARMFUL
from scans.data.overlap import cleared_sets
from scans.errors import ConfigError
from scans.judge import flags_by_label
from scans.methods.default import Default
from scans.methods.scans import Scans, ScansClassifier
from scans.stages import classify, steer
from scans.stages.context import Run, prompts_hash
from scans.stages.producers import produces, view
from scans.steering import harm_similarity
from scans.steering.tuning import (
    TunedChoice,
    behaviour,
    best_threshold,
    best_window,
    layer_auroc,
    select_setting,
)

log = logging.getLogger(__name__)
STAGE = "tune"
CHOICE = "tuned.json"
VERSION = 2  # 2: with the two-magnitude grid
METHOD = "SCANS (tuned)"
CLASSIFIER_KEYS = ("compare", "use", "anchor_sets", "anchor_size", "anchor_seed", "probe", "gradsafe")


def validation(r: Run) -> dict:
    """The validation split: each set less what the disjointness rule removes (an exact or near duplicate of a
    reported or held-back prompt: 11 + 6 JBB goals are AdvBench's, 10 + 3 OKTest held-out prompts OKTest's)."""
    return cleared_sets(r.cfg, list(r.cfg.tune.validation_sets), r.cfg.tune.get("validation_limit"))


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


@view("validation_subset")
def validation_subset(r: Run) -> dict[str, list]:
    """The validation generation subset's prompts per label, in the order of their `validation_flags`."""
    items = [p for prompts in validation(r).values() for p in prompts]
    return {lab: [items[i] for i in idx] for lab, idx in generation_subset(r, items).items()}


@view("validation_split")
def _validation_split(r: Run) -> dict[str, list]:
    """The whole validation split, per set (what the classifiers' choices read: labels, no generation)."""
    return validation(r)


def validation_responses(r: Run, settings: list[tuple]) -> list[dict[str, list[dict]]]:
    """Per setting (method, coefficients per label or None), its responses on the validation generation subset, per
    label (`steer.respond_jobs` rows)."""
    subsets = {f"validation-{lab}": prompts for lab, prompts in validation_subset(r).items()}
    jobs = [(m, subsets, None if c is None else {f"validation-{lab}": v for lab, v in c.items()}) for m, c in settings]
    return [
        {name.removeprefix("validation-"): rows for name, rows in responses.items()}
        for responses in steer.respond_jobs(r, jobs, r.cfg.tune.max_new_tokens)
    ]


def validation_flags(r: Run, settings: list[tuple]) -> list[dict[str, np.ndarray]]:
    """Per setting, the `judge.fit` judge's refusal flag of each prompt of the validation generation subset, per
    label."""
    return [flags_by_label(r.cfg.judge.fit, responses) for responses in validation_responses(r, settings)]


@view("validation_flags")
def _validation_flags(r: Run, method, coefficients=None) -> dict[str, np.ndarray]:
    """One method's validation flags, as methods ask for them (the false-refusal ablation's layer choice)."""
    return validation_flags(r, [(method, coefficients)])[0]


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


@dataclass
class Validation:
    """The validation split as the grids read it: the sets, their prompts and labels, σ(q)'s per-layer similarities,
    and the seeded subset each setting is judged on by generating."""

    sets: dict
    items: list
    harmful: list[bool]
    layer_sims: torch.Tensor
    subset: dict[str, list[int]]

    def coefficients(self, method, scores: torch.Tensor) -> dict:
        # The subset's scores are rows of the validation sets' cached ones: no second forward pass.
        return {lab: method.coefficients_from(scores[idx]) for lab, idx in self.subset.items()}


def _layer_grid(r: Run) -> list[tuple[int, ...]]:
    t = r.cfg.tune
    for a in t.alphas:  # checked before any model work (a model's own grid is model.grids, configs/tune)
        number(a, "tune.alphas[] (or model.grids.tune_alphas)", 0.0)
    where = "tune.steer_layers[] (or model.grids.tune_steer_layers)"
    return [tuple(parse_layers(spec, r.num_layers, where)) for spec in t.steer_layers]


def choose_classification(r: Run, v: Validation) -> dict:
    """σ(q)'s 𝓛 (the window with the best validation AUROC) and 𝒯 (the best balanced accuracy), from the cached
    similarities: no generation."""
    t = r.cfg.tune
    auroc = layer_auroc(v.layer_sims, v.harmful)
    cls_layers, cls_auroc = best_window(v.layer_sims, v.harmful, list(t.classify_window_sizes))
    threshold, cls_bacc = best_threshold(harm_similarity(v.layer_sims, cls_layers), v.harmful)
    paper = methods.load(r, methods.HEADLINE[False])
    paper_auroc = float(roc_auc_score(v.harmful, harm_similarity(v.layer_sims, paper.classify_layers).numpy()))
    return {"classify_layers": cls_layers, "threshold": threshold, "classifier_auroc": cls_auroc,
            "classifier_balanced_accuracy": cls_bacc, "paper_recipe_auroc": paper_auroc,
            "per_layer_auroc": [float(a) for a in auroc]}  # fmt: skip


def scans_grid(r: Run, v: Validation, classification: dict, default: dict) -> tuple[list, list, dict, bool, list]:
    """The SCANS (tuned) grid: α x steering layers on the validation subset, 𝓛 and 𝒯 fixed; the least benign refusal
    within the harmful-refusal cap. Returns the grid methods, their flags, the grid, the best setting and whether
    the cap was met."""
    t = r.cfg.tune
    grid_methods = [
        Scans(
            METHOD, float(alpha), layers, tuple(classification["classify_layers"]), classification["threshold"],
            tuned=True, positions=r.cfg.steer.positions, normalize=bool(r.cfg.steer.normalize),
            response=r.cfg.classify.response,
        )
        for layers in _layer_grid(r)
        for alpha in t.alphas
    ]  # fmt: skip
    grid_flags = validation_flags(r, [(m, v.coefficients(m, v.layer_sims)) for m in grid_methods])
    grid = [
        {"alpha": m.alpha, "steer_layers": list(m.steer_layers), **behaviour(f)}
        for m, f in zip(grid_methods, grid_flags)
    ]
    for row in grid:
        log.info("tune: %s", row)
    best, cap_met = select_setting(grid, default[HARMFUL], t.max_harmful_drop)
    return grid_methods, grid_flags, grid, best, cap_met


def two_magnitudes(r: Run, v: Validation, grid_methods, grid, grid_flags, default_flags, default) -> dict:
    """The SCANS (tuned, two magnitudes) choice, from the symmetric grid's flags (`two_magnitude_grid`)."""
    signs = {lab: grid_methods[0].signs(v.layer_sims[idx]) for lab, idx in v.subset.items()}
    two = two_magnitude_grid(grid, grid_flags, default_flags, signs)
    two_best, two_cap_met = select_setting(two, default[HARMFUL], r.cfg.tune.max_harmful_drop)
    return {**{k: two_best[k] for k in ("alpha", "alpha_harmful", "steer_layers")}, "cap_met": two_cap_met,
            "grid": two}  # fmt: skip


def classifier_grid(r: Run, v: Validation, default: dict) -> tuple[list, dict]:
    """The same grid for the steering with the signs of the chosen classifier (the "SCANS + classifier" row):
    every classifier compared on validation, `classify.use` picked, then α x steering layers for its signs."""
    t = r.cfg.tune
    compared = compare(r, v.sets)
    chosen = pick(compared, r.cfg.classify.use)
    scores = torch.cat(
        [classify.scores(r, chosen["kind"], chosen["anchors"], name, prompts) for name, prompts in v.sets.items()]
    )
    cls_methods = [
        ScansClassifier(
            "SCANS + classifier", float(alpha), layers, tuple(chosen["layers"]), chosen["threshold"], tuned=True,
            positions=r.cfg.steer.positions, normalize=bool(r.cfg.steer.normalize), response=r.cfg.classify.response,
            classifier=r.cfg.classify.use, kind=chosen["kind"], anchors=chosen["anchors"],
        )
        for layers in _layer_grid(r)
        for alpha in t.alphas
    ]  # fmt: skip
    cls_settings = [(m, v.coefficients(m, scores)) for m in cls_methods]
    cls_grid = [
        {"alpha": m.alpha, "steer_layers": list(m.steer_layers), **rates}
        for m, rates in zip(cls_methods, validation_behaviours(r, cls_settings))
    ]
    for row in cls_grid:
        log.info("tune: %s/%s %s", chosen["kind"], chosen["anchors"], row)
    cls_best, cls_cap_met = select_setting(cls_grid, default[HARMFUL], t.max_harmful_drop)
    return compared, {
        **{k: chosen[k] for k in ("kind", "anchors", "layers", "threshold", "auroc", "balanced_accuracy")},
        "use": r.cfg.classify.use,
        "alpha": cls_best["alpha"],
        "steer_layers": cls_best["steer_layers"],
        "cap_met": cls_cap_met,
        "grid": cls_grid,
    }


def _load(r: Run, path: Path) -> TunedChoice:
    return TunedChoice.from_record(read_json(path / CHOICE))


@produces("tuned", STAGE, key, _load)
def build(r: Run, tmp: Path) -> dict:
    """Every tuned row's choice, into `tmp/tuned.json`."""
    _layer_grid(r)  # a bad grid is an error before any model work
    sets = validation(r)
    layer_sims = torch.cat([classify.similarities(r, name, prompts) for name, prompts in sets.items()])
    items = [p for prompts in sets.values() for p in prompts]
    v = Validation(sets, items, [p.label == HARMFUL for p in items], layer_sims, generation_subset(r, items))
    classification = choose_classification(r, v)
    default_flags = validation_flags(r, [(Default(), None)])[0]
    default = behaviour(default_flags)
    grid_methods, grid_flags, grid, best, cap_met = scans_grid(r, v, classification, default)
    two = two_magnitudes(r, v, grid_methods, grid, grid_flags, default_flags, default)
    compared, chosen = classifier_grid(r, v, default)
    choice = {
        "alpha": best["alpha"],
        "steer_layers": best["steer_layers"],
        "classify_layers": classification["classify_layers"],
        "threshold": classification["threshold"],
        "validation": {
            "sets": {n: len(p) for n, p in sets.items()},
            **{
                k: classification[k]
                for k in ("classifier_auroc", "classifier_balanced_accuracy", "paper_recipe_auroc", "per_layer_auroc")
            },
            "generation_subset": {lab: len(idx) for lab, idx in v.subset.items()},
            "default_behaviour": default,
            "max_harmful_drop": r.cfg.tune.max_harmful_drop,
            "cap_met": cap_met,
            "grid": grid,
        },  # fmt: skip
        "two_magnitudes": two,
        "classifiers": compared,
        "classifier": chosen,
    }
    write_json(tmp / CHOICE, choice)
    log.info("tune: chose α=%s, steering %s, 𝓛 %s, 𝒯 %.3f", best["alpha"], best["steer_layers"],
             classification["classify_layers"], classification["threshold"])  # fmt: skip
    log.info("tune: two magnitudes: α %s (benign), %s (harmful)", two["alpha"], two["alpha_harmful"])
    return {"key": r.key("tuned")}


def run(r: Run) -> TunedChoice | None:
    return r.artifact("tuned") if r.cfg.steer.tuned else None


def load(r: Run) -> TunedChoice:
    return r.artifact("tuned")
