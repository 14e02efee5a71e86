"""The method protocol: every row of Tables 2-4 is a `Method`, and every consumer acts through its `Intervention`
(`scans.steering.intervention`, re-exported here).

A method is a named, frozen config (one YAML of `configs/method/`, built with `_target_`):

- `settings()`: every field that changes its outputs (`name` is a label only). With `upstream(run)`, the keys of
  the artifacts it reads, and the model's identity, it is the method's artifact key (`method_key`).
- `resolve(run)`: the concrete method (the tuned SCANS row reads its values from the `tune` artifact).
- `prepare(run)`: what it must fit or train first (an expert adapter, a soft prompt, a direction), cached as an
  artifact of its own by the `prepare` stage. Methods with nothing to fit return None.
- `intervention(run)`: the one object every consumer uses: generation (Table 2, the sweeps, XSum), teacher-forced
  logits (perplexity, MMLU through lm-eval) and cost (Table 4).
- `coefficients(run, prompts, name)`: one number per query, computed before any batch (SCANS: σ(q)·α); its time
  is reported apart in Table 4.

`run` is a `MethodContext`: what a method may ask of a pipeline run. Methods never import the stages; what they read
from a run (vectors, a tuned choice, validation behaviour) they ask for by name with `run.artifact(name, **inputs)`,
and the stage layer, which registered the producers of those names, builds what is missing.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from scans.artifacts import stable_hash
from scans.data.overlap import blocked_sets, rule
from scans.steering.intervention import (
    Intervention,
    Row,
    forward_logits,
    gather_positions,
    insert_encoded,
    insert_rows,
    teacher_forced_logits,
)

if TYPE_CHECKING:
    from omegaconf import DictConfig

    from scans.data import Prompt
    from scans.models import LoadedModel


class MethodContext(Protocol):
    """What a method may ask of a run: the config, the model, layer specs resolved to indices, and artifacts by name.

    `artifact(name, **inputs)` returns the named artifact (built first, once, when missing); `key(name, **inputs)` its
    key alone, computed without a forward pass, a fit or a model load (a method's `upstream`). The names are those
    the stages register (`scans.stages.producers`): `vectors`, `tuned`, `similarities`, `classifier`,
    `classifier_scores`, `prepared`, `validation_flags`, `validation_subset` (the prompts those flags are of, per
    label), `validation_split` (the whole validation split, per set)."""

    cfg: DictConfig
    methods_cache: dict
    interventions_cache: dict

    @property
    def lm(self) -> LoadedModel: ...

    @property
    def model_name(self) -> str: ...

    @property
    def model_identity(self) -> dict: ...

    @property
    def fit_judge_identity(self) -> dict: ...

    @property
    def decoding_identity(self) -> dict: ...

    @property
    def num_layers(self) -> int: ...

    def layers_of(self, spec, key: str = "steer.layers") -> list[int]: ...

    def artifact(self, name: str, /, **inputs) -> Any: ...

    def key(self, name: str, /, **inputs) -> str: ...


@dataclass(frozen=True)
class Method:
    """A row of Tables 2-4. Subclasses are frozen dataclasses whose fields are the method's settings."""

    name: str

    def settings(self) -> dict:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "name"}
        return {"method": f"{type(self).__module__}.{type(self).__qualname__}", **fields}

    @property
    def slug(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.name.lower()).strip("-")

    def resolve(self, run: MethodContext) -> Method:
        return self

    def upstream(self, run: MethodContext) -> dict:
        """Keys of the artifacts this method reads (vectors, an adapter, a soft prompt)."""
        return {}

    def prepare(self, run: MethodContext) -> Any:
        """Fit or train what the method needs, as a cached artifact; None when there is nothing to fit."""
        return None

    def intervention(self, run: MethodContext) -> Intervention:
        return Intervention()

    def coefficients(self, run: MethodContext, prompts: Sequence[Prompt], name: str | None) -> torch.Tensor | None:
        """One number per query, or None. `name` is the set's name, under which per-query inputs may be cached;
        None computes them afresh (the cost stage times this)."""
        return None

    def response_inputs(self, coefficients: torch.Tensor | None) -> dict:
        """What keys a set of responses: the settings, and the per-query coefficients when there are any."""
        out = self.settings()
        if coefficients is not None:
            out["coefficients"] = [round(float(c), 6) for c in coefficients]
        return out


class Trained:
    """A method whose `prepare` trains one artifact (`prepare/<prefix>-<training key>/`, the `prepared` artifact), or
    reads one given by path.

    The class sets `prefix` and implements `training_key(run)`, `given()` (the path a user supplied, or None) and
    `build(run, tmp)` (train, write files into `tmp`, return the summary)."""

    prefix: str = ""

    def given(self) -> str | None:
        return None

    def upstream(self, run: MethodContext) -> dict:
        return {"given": self.given()} if self.given() else {self.prefix: self.training_key(run)}

    def artifact_key(self, run: MethodContext, part: str | None = None) -> str:
        return f"{self.prefix}-{self.training_key(run)}"

    def build_artifact(self, run: MethodContext, tmp: Path, part: str | None = None) -> dict:
        return self.build(run, tmp)

    def artifact_dir(self, run: MethodContext) -> Path:
        return run.artifact("prepared", method=self).path

    def prepare(self, run: MethodContext) -> dict:
        if self.given():
            return {"given": self.given()}
        return run.artifact("prepared", method=self).summary


def layer_spec(value) -> tuple[int, ...] | str | None:
    """A YAML layer spec kept as given ("9-18", a segment name) or a list made a tuple (hashable, frozen)."""
    if value is None or isinstance(value, str):
        return value
    return (int(value),) if isinstance(value, int) else tuple(int(x) for x in value)


def check_disjoint(run: MethodContext, texts: list[str], what: str) -> dict:
    """The disjointness rule over prompts a method learns from; returns the counts and the removed prompts."""
    result = rule(run.cfg).check(texts)
    return {
        "what": what, **result.counts(), "threshold": float(run.cfg.overlap.near_duplicate),
        "sets": blocked_sets(run.cfg),
        "exact_matches": [[texts[i], other] for i, other in result.exact],
        "near_duplicates": [[texts[i], other, sim] for i, other, sim in result.near],
        "kept_indices": result.kept,
    }  # fmt: skip


def method_key(run: MethodContext, method: Method, inputs: dict | None = None) -> str:
    """The artifact key of a method's outputs: model, settings (or `inputs`) and upstream artifacts."""
    settings = method.settings() if inputs is None else inputs
    return stable_hash({"model": run.model_identity, "settings": settings, "upstream": method.upstream(run)})


__all__ = [
    "Intervention",
    "Method",
    "MethodContext",
    "Row",
    "Trained",
    "check_disjoint",
    "forward_logits",
    "gather_positions",
    "insert_encoded",
    "insert_rows",
    "layer_spec",
    "method_key",
    "teacher_forced_logits",
]
