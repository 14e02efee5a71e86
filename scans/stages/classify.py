"""Stage `classify`: the harm classifiers' inputs for every evaluation set.

One forward pass of "prompt + Sure" per set (`features`: a_p and a_e at every layer) is cached and shared by the
feature classifiers (scans.steering.harm); σ(q)'s per-layer cosines with the harm direction (Eqs. 2-4) are cached
beside it, so that a change of 𝓛 or 𝒯 (a sweep) needs no forward pass. Anchor sets, fitted classifiers and
GradSafe's per-prompt scores are cached too, and so are the prompt states that the successors' per-query conditions
read (`query_states`: CAST's condition, AdaSteer's coordinates), so a later stage or run reads rather than recomputes
them.
"""

from __future__ import annotations

import logging
import random
from pathlib import Path

import torch
from omegaconf import OmegaConf

from scans.artifacts import load_tensors, read_json, save_tensors, stable_hash, write_json, write_jsonl
from scans.data import BENIGN, HARMFUL, Prompt, load_prompts
from scans.data.overlap import rule
from scans.errors import ConfigError
from scans.methods.pools import prompt_states
from scans.models import encode
from scans.stages.context import Run, prompts_hash
from scans.stages.producers import produces, view
from scans.steering import harm
from scans.steering.classifier import prompt_and_response_states
from scans.steering.vectors import layer_similarities, transition

log = logging.getLogger(__name__)
STAGE = "classify"
SIMS = "layer_similarities.safetensors"
FEATURES = "features.safetensors"
FITTED = "classifier.safetensors"
SCORES = "scores.safetensors"
STATES = "states.safetensors"


def key(r: Run, name: str, prompts: list[Prompt]) -> str:
    return f"{name}-{stable_hash({'extract': r.extract_key, 'prompts': prompts_hash(prompts)})}"


def _compute_features(r: Run, name: str | None, prompts: list[Prompt]) -> harm.Features:
    a_p, a_e = prompt_and_response_states(
        r.lm.model, r.lm.chat, [p.text for p in prompts], r.cfg.classify.batch_size, r.cfg.classify.response,
        f"states {name or 'prompts'}",
    )  # fmt: skip
    return harm.Features(a_p, a_e)


def features_key(r: Run, name: str, prompts: list[Prompt]) -> str:
    return f"features-{name}-" + stable_hash(
        {"model": r.model_identity, "response": r.cfg.classify.response, "prompts": prompts_hash(prompts)}
    )


def _load_features(r: Run, path: Path, name: str, prompts: list[Prompt]) -> harm.Features:
    t = load_tensors(path / FEATURES)
    return harm.Features(t["prompt"], t["response"])


@produces("features", STAGE, features_key, _load_features)
def _build_features(r: Run, tmp: Path, name: str, prompts: list[Prompt]) -> dict:
    f = _compute_features(r, name, prompts)
    save_tensors(tmp / FEATURES, {"prompt": f.prompt, "response": f.response})
    write_jsonl(tmp / "prompts.jsonl", [{"text": p.text, "label": p.label} for p in prompts])
    write_json(tmp / "summary.json", {"n": len(prompts)})
    return {"set": name}


def features(r: Run, name: str | None, prompts: list[Prompt]) -> harm.Features:
    """a_p and a_e of every prompt at every layer: cached per named set, computed afresh when `name` is None."""
    if name is None:
        return _compute_features(r, name, prompts)
    return r.artifact("features", name=name, prompts=prompts)


def _load_similarities(r: Run, path: Path, name: str, prompts: list[Prompt]) -> torch.Tensor:
    return load_tensors(path / SIMS)["layer_similarities"]


@produces("similarities", STAGE, key, _load_similarities)
def _build_similarities(r: Run, tmp: Path, name: str, prompts: list[Prompt]) -> dict:
    f = features(r, name, prompts)
    sims = layer_similarities(transition(f.prompt, f.response), r.artifact("vectors")["harm_direction"])
    save_tensors(tmp / SIMS, {"layer_similarities": sims})
    write_jsonl(tmp / "prompts.jsonl", [{"text": p.text, "label": p.label} for p in prompts])
    log.info("classify: %s done (%d prompts)", name, len(prompts))
    return {"eval_set": name, "n": len(prompts), "extract_key": r.extract_key, "model_name": r.model_name}


def similarities(r: Run, name: str, prompts: list[Prompt]) -> torch.Tensor:
    """(N, L) per-layer σ(q) similarities of one set (the steering anchors' harm direction), cached."""
    return r.artifact("similarities", name=name, prompts=list(prompts))


def states_key(r: Run, name: str, prompts: list[Prompt], layers: tuple[int, ...], reduce: str) -> str:
    inputs = {"model": r.model_identity, "prompts": prompts_hash(prompts), "layers": list(layers), "reduce": reduce,
              "batch_size": int(r.cfg.classify.batch_size)}  # fmt: skip
    return f"states-{name}-{stable_hash(inputs)}"


def _load_states(r: Run, path: Path, **_) -> torch.Tensor:
    return load_tensors(path / STATES)["states"]


@produces("query_states", STAGE, states_key, _load_states)
def _build_states(r: Run, tmp: Path, name: str, prompts: list[Prompt], layers: tuple[int, ...], reduce: str) -> dict:
    """(N, len(layers), D) unsteered prompt states of a named set (`scans.methods.pools.prompt_states`)."""
    states = prompt_states(r, [p.text for p in prompts], layers, f"states {name}", reduce)
    save_tensors(tmp / STATES, {"states": states})
    write_jsonl(tmp / "prompts.jsonl", [{"text": p.text, "label": p.label} for p in prompts])
    return {"set": name, "n": len(prompts), "layers": list(layers), "reduce": reduce}


# --- anchor sets and classifiers ---------------------------------------------------------------------------------


def _side(r: Run, dataset: str, label: str, rng: random.Random) -> list[Prompt]:
    a = r.cfg.data.anchors
    if dataset == a.harmful and label == HARMFUL:
        return list(r.anchors.harmful_anchors)
    if dataset == a.benign and label == BENIGN:
        return list(r.anchors.benign_anchors)
    if dataset in (a.harmful, a.benign):
        raise ConfigError(f"anchor set side {dataset!r} ({label}): that file's anchors are the other label's")
    prompts = [p for p in load_prompts(dataset) if p.label == label]
    if not prompts:
        raise ConfigError(f"anchor set side {dataset!r}: it has no {label} prompts")
    kept = rule(r.cfg).check([p.text for p in prompts]).kept
    prompts = [prompts[i] for i in kept]
    size = r.cfg.classify.anchor_size
    if size is not None and len(prompts) > size:
        prompts = [prompts[i] for i in sorted(rng.sample(range(len(prompts)), size))]
    return [Prompt(p.text, label, p.source, p.meta) for p in prompts]


def anchor_set(r: Run, name: str) -> tuple[list[Prompt], list[Prompt]]:
    """(harmful, benign) prompts of an anchor set of `classify.anchor_sets`, after the disjointness rule."""
    sets = r.cfg.classify.anchor_sets
    if name not in sets:
        raise ConfigError(f"unknown anchor set {name!r}; known: {', '.join(sets)} (classify.anchor_sets)")
    spec = sets[name]
    if OmegaConf.is_list(spec):
        parts = [anchor_set(r, part) for part in spec]
        unique = lambda ps: list({p.text: p for p in ps}.values())  # noqa: E731  (a side two sets share, once)
        return unique([p for h, _ in parts for p in h]), unique([p for _, b in parts for p in b])
    rng = random.Random(f"{r.cfg.classify.anchor_seed}:{name}")
    return _side(r, spec.harmful, HARMFUL, rng), _side(r, spec.benign, BENIGN, rng)


def _params(r: Run, kind: str) -> dict:
    c = r.cfg.classify
    return OmegaConf.to_container(c[kind], resolve=True) if kind in c else {}


def fitted_key(r: Run, kind: str, anchors: str) -> str:
    """The key of a fitted classifier: its anchor prompts (data and the disjointness rule, no model), the model."""
    harmful, benign = anchor_set(r, anchors)
    return f"{kind}-{anchors}-" + stable_hash(
        {
            "model": r.model_identity,
            "response": r.cfg.classify.response,
            "prompts": prompts_hash(harmful + benign),
            "params": _params(r, kind),
            "seed": r.cfg.seed,
        }  # fmt: skip
    )


def _load_fitted(r: Run, path: Path, kind: str, anchors: str) -> dict:
    return {"key": path.name, "summary": read_json(path / "summary.json"), "state": load_tensors(path / FITTED)}


@produces("classifier", STAGE, fitted_key, _load_fitted)
def _build_fitted(r: Run, tmp: Path, kind: str, anchors: str) -> dict:
    """A feature classifier fitted on an anchor set, or GradSafe's references."""
    harmful, benign = anchor_set(r, anchors)
    prompts = harmful + benign
    if kind == "gradsafe":
        n = r.cfg.classify.gradsafe.references
        rows = lambda ps: [_encoded(r, p.text) for p in ps[:n]]  # noqa: E731
        state = harm.gradsafe_reference(r.lm.model, rows(harmful), rows(benign), float(r.cfg.classify.gradsafe.gap))
        critical = harm.critical_slices(state)
    else:
        f = features(r, f"anchors-{anchors}", prompts)
        state = harm.fit(kind, f, [p.label == HARMFUL for p in prompts], c=float(_params(r, "probe")["C"]),
                         seed=r.cfg.seed)  # fmt: skip
        critical = None
    save_tensors(tmp / FITTED, state)
    write_jsonl(tmp / "anchors.jsonl", [{"text": p.text, "label": p.label, "source": p.source} for p in prompts])
    write_json(tmp / "summary.json", {"kind": kind, "anchors": anchors, "harmful": len(harmful), "benign": len(benign),
                                      "critical_slices": critical})  # fmt: skip
    return {"kind": kind, "anchors": anchors}


def fitted(r: Run, kind: str, anchors: str) -> dict:
    """A feature classifier fitted on an anchor set (cached), or GradSafe's references: key, summary and state."""
    return r.artifact("classifier", kind=kind, anchors=anchors)


def _encoded(r: Run, text: str) -> tuple[list[int], int]:
    e = encode(r.lm.chat, text, r.cfg.classify.response)
    return e.input_ids, e.eoi_index


def scores(r: Run, kind: str, anchors: str, name: str | None, prompts: list[Prompt]) -> torch.Tensor:
    """(N, L) per-layer harm scores of one classifier on a prompt set. GradSafe's are cached per named set, for every
    anchor set it is compared on at once (a query's gradient does not depend on the references)."""
    if kind != "gradsafe":
        return harm.layer_scores(kind, fitted(r, kind, anchors)["state"], features(r, name, prompts))
    rows = lambda: [_encoded(r, p.text) for p in prompts]  # noqa: E731
    if name is None:
        state = fitted(r, kind, anchors)["state"]
        return harm.gradsafe_scores(
            r.lm.model, rows(), [state], r.num_layers, "GradSafe prompts", r.cfg.classify.batch_size
        )[0]
    together = list(dict.fromkeys([anchors, *r.cfg.classify.compare.get("gradsafe", [])]))
    fits = {a: fitted(r, kind, a) for a in together}
    keys = {a: f"gradsafe-{name}-{stable_hash({'fit': f['key'], 'prompts': prompts_hash(prompts)})}"
            for a, f in fits.items()}  # fmt: skip
    with r.store.building(r.model_name, STAGE, keys.values()) as missing:
        todo = [a for a in together if keys[a] in missing]
        if todo:
            computed = harm.gradsafe_scores(
                r.lm.model,
                rows(),
                [fits[a]["state"] for a in todo],
                r.num_layers,
                f"GradSafe {name}",
                r.cfg.classify.batch_size,
            )
            for a, result in zip(todo, computed):
                with r.store.write(r.model_name, STAGE, keys[a], {"set": name, "anchors": a, "n": len(prompts)}) as tmp:
                    save_tensors(tmp / SCORES, {"scores": result})
    return load_tensors(r.store.path(r.model_name, STAGE, keys[anchors]) / SCORES)["scores"]


@view("classifier_scores")
def _scores_view(r: Run, kind: str, anchors: str, name: str | None, prompts: list[Prompt]) -> torch.Tensor:
    return scores(r, kind, anchors, name, prompts)


def run(r: Run) -> None:
    for name, prompts in r.eval_sets.items():
        similarities(r, name, prompts)
