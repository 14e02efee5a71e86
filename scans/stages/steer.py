"""Stage `steer`: responses of the Default model and of SCANS on every evaluation set, as JSONL.

Each SCANS row records its harm similarity s_q (Eq. 4) and sign σ(q) (Eq. 5); the Default rows are unsteered.
With `steer.tuned=true` a second SCANS row uses the hyperparameters chosen on the validation split (`tune`).
"""

from __future__ import annotations

import logging
import re
from dataclasses import asdict, dataclass, field

import torch
from omegaconf import open_dict

from scans.artifacts import read_jsonl, stable_hash, write_jsonl
from scans.data import Prompt
from scans.models import encode
from scans.stages import classify, extract
from scans.stages.context import Run, prompts_hash
from scans.steering import DecodingConfig, Steering, generate, harm_similarity, steer_sign

log = logging.getLogger(__name__)
STAGE = "responses"
RESPONSES = "responses.jsonl"
DEFAULT = "Default"


@dataclass(frozen=True)
class Method:
    """A row of Table 2: unsteered (alpha None) or SCANS with its four hyperparameters."""

    name: str
    alpha: float | None = None
    steer_layers: tuple[int, ...] = ()
    classify_layers: tuple[int, ...] = ()
    threshold: float | None = None
    max_new_tokens: int | None = field(default=None)  # None: generation.max_new_tokens

    @property
    def steered(self) -> bool:
        return self.alpha is not None

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")


def paper_method(r: Run, name: str = "SCANS") -> Method:
    return Method(
        name,
        float(r.cfg.steer.alpha),
        tuple(r.steer_layers),
        tuple(r.classify_layers),
        float(r.cfg.classify.threshold),
    )


def methods(r: Run) -> list[Method]:
    if not r.cfg.steer.tuned:
        return [Method(DEFAULT), paper_method(r)]
    from scans.stages import tune

    return [Method(DEFAULT), paper_method(r, "SCANS (paper recipe)"), tune.load_method(r)]


def decoding(r: Run, method: Method) -> DecodingConfig:
    g = r.cfg.generation
    return DecodingConfig(method.max_new_tokens or g.max_new_tokens, g.repetition_penalty, g.batch_size)


def method_settings(r: Run, method: Method) -> dict:
    """Every input of a method except decoding: the model and, for SCANS, its hyperparameters and anchors."""
    if not method.steered:
        return {"model": r.model_identity}
    return {
        "model": r.model_identity,
        **{k: v for k, v in asdict(method).items() if k not in ("name", "max_new_tokens")},
        "extract": r.extract_key,
        "positions": r.cfg.steer.positions,
        "normalize": bool(r.cfg.steer.normalize),
        "response": r.cfg.classify.response,
    }


def settings(r: Run, method: Method) -> dict:
    """Every input that changes a method's responses, but σ(q) itself (see `key`)."""
    return {**method_settings(r, method), "decoding": asdict(decoding(r, method))}


def headline(r: Run) -> Method:
    """The SCANS row that Tables 3 and 4 compare with Default: the tuned one when there is one."""
    return methods(r)[-1]


def similarities_and_signs(
    r: Run, method: Method, name: str, prompts: list[Prompt], layer_sims: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """s_q (Eq. 4) and σ(q) (Eq. 5) of every prompt of a set under a method, from the set's cached per-layer
    similarities (or from `layer_sims` (N, L), when they are already at hand)."""
    if layer_sims is None:
        layer_sims = classify.similarities(r, name, prompts)
    sims = harm_similarity(layer_sims, method.classify_layers)
    return sims, steer_sign(sims, method.threshold)


def signs(r: Run, method: Method, name: str, prompts: list[Prompt]) -> torch.Tensor:
    return similarities_and_signs(r, method, name, prompts)[1]


def key(r: Run, method: Method, name: str, prompts: list[Prompt], sign: torch.Tensor | None = None) -> str:
    """A steered generation depends on 𝓛 and 𝒯 only through each prompt's σ(q): the key holds the signs instead,
    so two settings whose signs agree (neighbouring 𝒯 of a sweep) share one set of responses."""
    inputs = settings(r, method)
    if method.steered:
        for k in ("classify_layers", "threshold", "response"):
            inputs.pop(k)
        if sign is None:
            sign = signs(r, method, name, prompts)
        inputs["signs"] = [int(x) for x in sign]
    digest = stable_hash({"settings": inputs, "prompts": prompts_hash(prompts)})
    return f"{name}-{'scans' if method.steered else method.slug}-{digest}"


def _locate(r: Run, method: Method, name: str, prompts: list[Prompt], layer_sims: torch.Tensor | None = None):
    """The responses' key, with s_q and σ(q) of a steered method (None for Default)."""
    sims = sign = None
    if method.steered:
        sims, sign = similarities_and_signs(r, method, name, prompts, layer_sims)
    return key(r, method, name, prompts, sign), sims, sign


def respond(
    r: Run, method: Method, name: str, prompts: list[Prompt], layer_sims: torch.Tensor | None = None
) -> list[dict]:
    """The responses of one method on one set, generated once and then read from their artifact.

    `layer_sims` (N, L) may be passed when the prompts' similarities are already at hand (a subset of a classified
    set); otherwise they come from the `classify` artifact of this set. Each row carries this method's s_q and σ(q).
    """
    k, sims, sign = _locate(r, method, name, prompts, layer_sims)
    if r.store.is_complete(r.model_name, STAGE, k):
        log.info("steer: reusing %s / %s", method.name, name)
        return _own(read_jsonl(r.store.path(r.model_name, STAGE, k) / RESPONSES), sims)
    encoded = [encode(r.lm.chat, p.text) for p in prompts]
    spec = None
    if method.steered:
        vectors = extract.load(r)["refusal_vectors"]
        spec = Steering(vectors, method.steer_layers, method.alpha, r.cfg.steer.positions)
    responses = generate(r.lm.model, r.lm.tokenizer, encoded, decoding(r, method), spec, sign, f"{method.name} {name}")
    rows = [
        {
            "eval_set": name,
            "prompt": p.text,
            "label": p.label,
            "sign": None if sign is None else int(sign[i]),
            "response": responses[i],
        }
        for i, p in enumerate(prompts)
    ]
    provenance = {"method": method.name, "eval_set": name, "n": len(prompts), "settings": settings(r, method)}
    with r.store.writing(r.model_name, STAGE, k, provenance) as tmp:
        write_jsonl(tmp / RESPONSES, rows)
    log.info("steer: %s / %s done (%d responses)", method.name, name, len(rows))
    return _own(rows, sims)


def _own(rows: list[dict], sims: torch.Tensor | None) -> list[dict]:
    """The rows with this method's s_q (a shared artifact stores the signs only, which every sharer agrees on)."""
    return [{**row, "similarity": None if sims is None else float(sims[i])} for i, row in enumerate(rows)]


def base_run(r: Run) -> Run | None:
    """For the organism: the same run on its base model, whose Default responses show what alignment changed."""
    if r.cfg.model.source.kind != "organism":
        return None
    cfg = r.cfg.copy()
    with open_dict(cfg):
        cfg.model = r.cfg.model.base
        cfg.steer.tuned = False
    return Run(cfg)


def run(r: Run) -> None:
    for method in methods(r):
        for name, prompts in r.eval_sets.items():
            respond(r, method, name, prompts)
    if (base := base_run(r)) is not None:
        for name, prompts in base.eval_sets.items():
            respond(base, Method(DEFAULT), name, prompts)


def load(r: Run, method: Method, name: str, prompts: list[Prompt]) -> tuple[str, list[dict]]:
    k, sims, _ = _locate(r, method, name, prompts)
    path = r.store.require(r.model_name, STAGE, k, "python -m scans stage=steer")
    return k, _own(read_jsonl(path / RESPONSES), sims)
