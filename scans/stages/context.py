"""What every stage shares: the config, the artifact store, the model (loaded once per process) and the data."""

from __future__ import annotations

import copy
import dataclasses
import logging
from functools import cached_property
from typing import Any

from omegaconf import DictConfig, OmegaConf

from scans.analysis.anchoring import segments
from scans.artifacts import ArtifactStore, stable_hash
from scans.config import ANCHOR_LAYERS, SEGMENTS, parse_layers
from scans.data import (
    BENIGN,
    HARMFUL,
    AnchorSplit,
    Prompt,
    anchor_split,
    configure_from,
    dataset_key,
    evaluation_sets,
    load_prompts,
)
from scans.data.overlap import anchor_matches, blocked_sets
from scans.errors import ConfigError
from scans.judge import judge_identity
from scans.models import load_model, sources
from scans.models.precision import resolve_dtype
from scans.stages.producers import PRODUCERS, Producer

log = logging.getLogger(__name__)

# A Hydra multirun runs its jobs one after another in one process: keep the loaded model between jobs.
_MODELS: dict[str, object] = {}


def prompts_hash(prompts: list[Prompt]) -> str:
    return stable_hash([[p.text, p.label] for p in prompts])


class Run:
    def __init__(self, cfg: DictConfig):
        self.cfg = cfg
        configure_from(cfg)  # the run's own dataset entries (data.sets, data.sets_dirs)
        self.store = ArtifactStore(cfg.paths.artifacts)
        self.methods_cache: dict = {}  # resolved methods by config name (scans.methods.load)
        self.interventions_cache: dict = {}  # interventions by method (scans.methods.intervention)
        self._chat = None  # a chat format in place of the model's own (`with_chat`)

    def with_chat(self, chat) -> Run:
        """This run with its model's chat format replaced (the prefill attack: `scans.models.PrefilledFormat`): the
        same config, store, model and keys, so artifacts keyed by the model (vectors, what a method fitted) are the
        plain run's, built first by it; fresh method caches, as what a method memoizes of prompt states belongs to
        the other format. Only what is keyed by a set's name (responses, σ(q)'s states) may be built under it."""
        view = copy.copy(self)
        view.methods_cache, view.interventions_cache, view._chat = {}, {}, chat
        return view

    def artifact(self, name: str, /, **inputs) -> Any:
        """The artifact `name` (a producer of `scans.stages.producers`) for these inputs, built first when it is
        missing, alone and under its lock, so that a stage run alone gets what it needs and parallel jobs build it
        once."""
        p = producer(name)
        if p.stage is None:
            return p.load(self, None, **inputs)
        k = p.key(self, **inputs)

        def build(tmp):
            log.info("%s: building %s (%s/%s)", self.cfg.stage, name, p.stage, k)
            return p.build(self, tmp, **inputs)

        return p.load(self, self.store.obtain(self.model_name, p.stage, k, build), **inputs)

    def key(self, name: str, /, **inputs) -> str:
        """The key of artifact `name` for these inputs: no forward pass, fit or model load."""
        return producer(name).key(self, **inputs)

    @property
    def model_name(self) -> str:
        return self.cfg.model.name

    @cached_property
    def source(self) -> sources.Source:
        """The model's source kind (`scans.models.sources`); a kind built by a stage (the organism) bound to the run."""
        kind = sources.get(self.cfg.model.source.kind)
        return kind.bind(self) if hasattr(kind, "bind") else kind

    @property
    def model_cache(self) -> str:
        return f"{self.cfg.paths.artifacts}/models"

    @cached_property
    def model_identity(self) -> dict:
        """What determines the model's activations: the weights as the source kind names them (a hub commit, a GGUF's
        sha256, the organism's align key), precision, format."""
        m = self.cfg.model
        identity = OmegaConf.to_container(
            OmegaConf.create({"dtype": m.dtype, "chat_format": m.chat_format, "system_prompt": m.system_prompt}),
            resolve=True,
        )
        identity["source"] = self.source.identity(m)
        identity["dtype"] = resolve_dtype(identity["dtype"], m.device)  # `auto` keyed as what it loads in
        return identity

    @property
    def lm(self):
        key = self._loaded_key
        if key not in _MODELS:
            log.info("loading model %s", self.model_name)
            # The weights the keys hold (a hub branch resolved to its commit once, never a newer one); the organism is
            # built here when missing.
            pinned = {**OmegaConf.to_container(self.cfg.model, resolve=True), "source": self.model_identity["source"]}
            location = self.source.materialize(OmegaConf.create(pinned), self.model_cache)
            _MODELS[key] = load_model(self.cfg.model, cache_dir=self.model_cache, location=location)
        return _MODELS[key] if self._chat is None else dataclasses.replace(_MODELS[key], chat=self._chat)

    @property
    def _loaded_key(self) -> str:
        m = self.cfg.model
        placement = OmegaConf.to_container(OmegaConf.create({"map": m.get("device_map")}), resolve=True)
        return stable_hash([self.model_identity, m.device, placement])

    def release_other_models(self) -> None:
        """Drop every loaded model but this run's (the base model an organism run loads for its comparison rows)."""
        keep = self._loaded_key
        for k in [k for k in _MODELS if k != keep]:
            del _MODELS[k]

    @cached_property
    def judge_identity(self) -> dict:
        """The reporting judge (`judge.name`) as cache keys hold it: its name and a hash of its rules
        (scans.judge.judge_identity)."""
        return judge_identity(self.cfg.judge.name)

    @cached_property
    def fit_judge_identity(self) -> dict:
        """The judge the pipeline's choices use (`judge.fit`: the organism's data, tuning, the baselines' data)."""
        return judge_identity(self.cfg.judge.fit)

    @cached_property
    def decoding_identity(self) -> dict:
        """The `generation` settings, for the key of every artifact that generates text with them."""
        return OmegaConf.to_container(self.cfg.generation, resolve=True)

    @cached_property
    def num_layers(self) -> int:
        """The model's depth: from its config, else as its source reads it (a config file, a GGUF header), never by
        loading the weights."""
        n = self.cfg.model.get("num_layers")
        return n if n is not None else self.source.num_layers(self.cfg.model, self.model_cache)

    @cached_property
    def steer_layers(self) -> list[int]:
        return self.layers_of(self.cfg.steer.layers)

    def layers_of(self, spec, key: str = "steer.layers") -> list[int]:
        """Steering layers from "a-b" or a list, `anchor` (the `anchor` stage's suggestion) or a segment's name."""
        if spec == ANCHOR_LAYERS:
            return list(self.artifact("anchor")["suggested_steer_layers"])
        if spec in SEGMENTS:
            bounds = self.cfg.analysis.segments
            layers = segments(self.num_layers, None if bounds is None else list(bounds))[spec]
            if not layers:
                raise ConfigError(f"{key}={spec}: that segment of a {self.num_layers}-layer model is empty")
            return layers
        return parse_layers(spec, self.num_layers, key)

    @cached_property
    def classify_layers(self) -> list[int]:
        return parse_layers(self.cfg.classify.layers, self.num_layers, "classify.layers")

    @cached_property
    def anchors(self) -> AnchorSplit:
        a = self.cfg.data.anchors
        pools = []
        for name, label in ((a.harmful, HARMFUL), (a.benign, BENIGN)):  # a two-label file gives its label's prompts
            prompts, matches = load_prompts(name), anchor_matches(self.cfg, name)
            keep = [i for i, p in enumerate(prompts) if p.label == label]
            pools.append(([prompts[i] for i in keep], [matches[i] == "none" for i in keep]))
        (harmful, ok_harmful), (benign, ok_benign) = pools
        return anchor_split(harmful, benign, a.size, a.seed, (ok_harmful, ok_benign))

    @cached_property
    def anchor_inputs(self) -> dict:
        a = self.cfg.data.anchors
        return {
            "harmful": a.harmful,
            "benign": a.benign,
            "size": a.size,
            "seed": a.seed,
            "fingerprints": {a.harmful: dataset_key(a.harmful), a.benign: dataset_key(a.benign)},
            "disjoint_from": self.overlap_inputs,
        }

    @cached_property
    def overlap_inputs(self) -> dict:
        """What the disjointness rule reads: the sets (with their fingerprints) and the threshold."""
        return {
            "sets": {n: dataset_key(n) for n in blocked_sets(self.cfg)},
            "near_duplicate": float(self.cfg.overlap.near_duplicate),
        }

    @cached_property
    def eval_sets(self) -> dict[str, list[Prompt]]:
        d = self.cfg.data
        return evaluation_sets(list(d.eval_sets), d.limit, d.limit_seed, self.anchors)

    @cached_property
    def full_sets(self) -> dict[str, list[Prompt]]:
        """Every prompt of `steer.full.sets` (all 250 + 200 of XSTest): some rows of Table 2 on enough prompts to
        decide (`steer.full_rows`)."""
        return evaluation_sets(list(self.cfg.steer.full.sets), None, self.cfg.data.limit_seed, self.anchors)

    @cached_property
    def extract_key(self) -> str:
        return stable_hash(
            {"model": self.model_identity, "anchors": self.anchor_inputs, "response": self.cfg.classify.response}
        )

    def config_dict(self, *keys: str) -> dict:
        return {k: OmegaConf.to_container(self.cfg[k], resolve=True) for k in keys}


def producer(name: str) -> Producer:
    try:
        return PRODUCERS[name]
    except KeyError:
        raise ConfigError(f"no producer of an artifact named {name!r}; known: {', '.join(sorted(PRODUCERS))}") from None
