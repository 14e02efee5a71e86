"""What every stage shares: the config, the artifact store, the model (loaded once per process) and the data."""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from scans.artifacts import ArtifactStore, stable_hash
from scans.config import ANCHOR_LAYERS, SEGMENTS, parse_layers
from scans.data import (
    BENIGN,
    HARMFUL,
    AnchorSplit,
    Prompt,
    anchor_split,
    dataset_key,
    evaluation_sets,
    load_prompts,
)
from scans.errors import ConfigError

log = logging.getLogger(__name__)

# A Hydra multirun runs its jobs one after another in one process: keep the loaded model between jobs.
_MODELS: dict[str, object] = {}
# The stages by name (filled by scans.stages): what `Run.require` runs to build a missing input.
PRODUCERS: dict[str, Callable[[Run], object]] = {}


def prompts_hash(prompts: list[Prompt]) -> str:
    return stable_hash([[p.text, p.label] for p in prompts])


class Run:
    def __init__(self, cfg: DictConfig):
        from scans.data import configure_from

        self.cfg = cfg
        configure_from(cfg)  # the run's own dataset entries (data.sets, data.sets_dirs)
        self.store = ArtifactStore(cfg.paths.artifacts)
        self.methods_cache: dict = {}  # resolved methods by config name (scans.methods.load)
        self.interventions_cache: dict = {}  # interventions by method (scans.methods.intervention)

    def require(self, producer: str, stage: str, key: str) -> Path:
        """The artifact `stage/key`, built first by running stage `producer` when it is missing, so that a stage run
        alone gets what it needs (as the organism is built by the first stage that loads the model)."""
        if not self.store.is_complete(self.model_name, stage, key):
            log.info("%s needs %s/%s: running stage %s", self.cfg.stage, stage, key, producer)
            PRODUCERS[producer](self)
        return self.store.require(self.model_name, stage, key, f"python -m scans stage={producer}")

    @property
    def model_name(self) -> str:
        return self.cfg.model.name

    @cached_property
    def model_identity(self) -> dict:
        """What determines the model's activations: weights (for the organism: its align key), precision, format."""
        from scans.models.loading import resolve_dtype

        m = self.cfg.model
        identity = OmegaConf.to_container(
            OmegaConf.create(
                {"source": m.source, "dtype": m.dtype, "chat_format": m.chat_format, "system_prompt": m.system_prompt}
            ),
            resolve=True,
        )
        identity["dtype"] = resolve_dtype(identity["dtype"], m.device)  # `auto` keyed as what it loads in
        if m.source.kind == "organism":
            from scans.stages import align

            identity["source"]["align"] = align.key(self)
        if m.source.kind == "hub":  # the commit, never a branch that moves under the cache
            from scans.models.loading import resolve_revision

            identity["source"]["revision"] = resolve_revision(m.source.id, m.source.get("revision"))
        return identity

    @property
    def lm(self):
        from scans.models import load_model

        key = self._loaded_key
        if key not in _MODELS:
            log.info("loading model %s", self.model_name)
            model_cfg = self.cfg.model
            if model_cfg.source.kind == "organism":
                from scans.stages import align

                path = align.run(self)  # builds the organism if it does not exist yet
                model_cfg = OmegaConf.create(
                    {**OmegaConf.to_container(model_cfg, resolve=True), "source": {"kind": "local", "path": str(path)}}
                )
            elif model_cfg.source.kind == "hub":  # the commit the keys hold, resolved once: never a newer `main`
                source = {**OmegaConf.to_container(model_cfg.source, resolve=True), **self.model_identity["source"]}
                model_cfg = OmegaConf.create({**OmegaConf.to_container(model_cfg, resolve=True), "source": source})
            _MODELS[key] = load_model(model_cfg, cache_dir=f"{self.cfg.paths.artifacts}/models")
        return _MODELS[key]

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
        from scans.judge import judge_identity

        return judge_identity(self.cfg.judge.name)

    @cached_property
    def fit_judge_identity(self) -> dict:
        """The judge the pipeline's choices use (`judge.fit`: the organism's data, tuning, the baselines' data)."""
        from scans.judge import judge_identity

        return judge_identity(self.cfg.judge.fit)

    @cached_property
    def decoding_identity(self) -> dict:
        """The `generation` settings, for the key of every artifact that generates text with them."""
        return OmegaConf.to_container(self.cfg.generation, resolve=True)

    @cached_property
    def num_layers(self) -> int:
        n = self.cfg.model.get("num_layers")
        return n if n is not None else self.lm.num_layers

    @cached_property
    def steer_layers(self) -> list[int]:
        return self.layers_of(self.cfg.steer.layers)

    def layers_of(self, spec, key: str = "steer.layers") -> list[int]:
        """Steering layers from "a-b" or a list, `anchor` (the `anchor` stage's suggestion) or a segment's name."""
        if spec == ANCHOR_LAYERS:
            from scans.stages import anchor

            return list(anchor.run(self)["suggested_steer_layers"])
        if spec in SEGMENTS:
            from scans.analysis.anchoring import segments

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
        from scans.data.overlap import anchor_matches

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
        from scans.data.overlap import blocked_sets

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
