"""SCANS (paper recipe and tuned) and ActAdd (always): activation steering of the refusal vectors.

SCANS steers row i by σ(q_i)·α·v (Eq. 6) with σ(q) from the harm similarity of the query (Eqs. 2-5), read from the
`classify` stage's cached per-layer similarities of each set. ActAdd (always) is the same steering with σ(q)
replaced by "benign" for every query (-α·v everywhere): the gap between the two rows is what the classifier buys.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import torch

from scans.config import parse_layers
from scans.errors import ConfigError
from scans.methods import headline
from scans.methods.base import Method, layer_spec
from scans.steering import Steering, harm_similarity, steer_sign
from scans.steering import classify as classify_queries
from scans.steering.tuning import TunedChoice, TunedClassifier
from scans.steering.vectors import steering_vectors


@dataclass(frozen=True)
class Scans(Method):
    """SCANS: α, steering layers, classification layers 𝓛 and threshold 𝒯 (null in `tuned`: from `tune`)."""

    alpha: float | None = None
    steer_layers: object = None  # "a-b", a list, a segment name or `anchor`
    classify_layers: object = None
    threshold: float | None = None
    tuned: bool = False  # take α, layers, 𝓛 and 𝒯 from the `tune` stage's artifact
    positions: str = "from_instruction_end"
    normalize: bool = True
    response: str = "Sure"
    # +alpha_harmful·v on the rows σ(q) calls harmful instead of +α·v (None: α; the two-magnitude extension)
    alpha_harmful: float | None = None
    two_magnitudes: bool = False  # with `tuned`: α, alpha_harmful and the layers of the tune stage's two-magnitude grid

    def __post_init__(self):
        if self.two_magnitudes and not self.tuned:
            raise ConfigError(f"{self.name}: two_magnitudes: true takes its magnitudes from the tune stage (tuned)")
        object.__setattr__(self, "steer_layers", layer_spec(self.steer_layers))
        object.__setattr__(self, "classify_layers", layer_spec(self.classify_layers))

    def resolve(self, run) -> Scans:
        if self.tuned and self.alpha is None:
            c: TunedChoice = run.artifact("tuned")
            steering = c.two_magnitudes if self.two_magnitudes else c.steering
            return replace(
                self,
                alpha=steering.alpha,
                alpha_harmful=steering.alpha_harmful if self.two_magnitudes else self.alpha_harmful,
                steer_layers=steering.steer_layers,
                classify_layers=c.classify_layers,
                threshold=c.threshold,
            )
        steer = self.steer_layers if isinstance(self.steer_layers, tuple) else tuple(run.layers_of(self.steer_layers))
        cls = self.classify_layers
        if not isinstance(cls, tuple):
            cls = tuple(parse_layers(cls, run.num_layers, "method.classify_layers"))
        return replace(self, alpha=float(self.alpha), steer_layers=steer, classify_layers=cls)

    def upstream(self, run) -> dict:
        return {"extract": run.key("vectors")}

    def steering(self, vectors: torch.Tensor) -> Steering:
        """Eq. 6's intervention: the refusal vectors (L, D) added on the steering layers with this row's α."""
        return Steering(vectors, self.steer_layers, float(self.alpha), self.positions)

    def intervention(self, run) -> Steering:
        return self.steering(_vectors(run, self.normalize))

    def coefficients_from(self, layer_sims: torch.Tensor) -> torch.Tensor:
        """σ(q)·α per query (Eq. 6's coefficient) from per-layer similarities (N, L); +alpha_harmful where σ(q) = +1
        when that is set."""
        signs = self.signs(layer_sims).float()
        if self.alpha_harmful is None:
            return signs * self.alpha
        return torch.where(signs > 0, signs * self.alpha_harmful, signs * self.alpha)

    def scores(self, run, prompts, name) -> torch.Tensor:
        """(N, L) per-layer similarities σ(q) reads (Eqs. 2-3), cached per named set."""
        return layer_similarities(run, prompts, name)

    def coefficients(self, run, prompts, name) -> torch.Tensor:
        """σ(q)·α per query of a prompt set."""
        return self.coefficients_from(self.scores(run, prompts, name))

    def called_harmful(self, run, prompts, name) -> torch.Tensor:
        """σ(q) = +1 per query (bool): whatever the row then adds (the two-magnitude row adds nothing there)."""
        return self.signs(self.scores(run, prompts, name)) > 0

    def response_inputs(self, coefficients) -> dict:
        """A steered generation depends on 𝓛 and 𝒯 only through each prompt's σ(q): the key holds the signs
        instead, so two settings whose signs agree (neighbouring 𝒯 of a sweep) share one set of responses."""
        out = self.settings()
        for k in ("classify_layers", "threshold", "response"):
            out.pop(k)
        out["signs"] = [int(torch.sign(torch.tensor(float(c)))) for c in coefficients]
        return out

    def similarities(self, layer_sims: torch.Tensor) -> torch.Tensor:
        """s_q (Eq. 4) from per-layer similarities (N, L)."""
        return harm_similarity(layer_sims, self.classify_layers)

    def signs(self, layer_sims: torch.Tensor) -> torch.Tensor:
        """σ(q) (Eq. 5) from per-layer similarities (N, L)."""
        return steer_sign(self.similarities(layer_sims), self.threshold)


@dataclass(frozen=True)
class ScansClassifier(Scans):
    """SCANS's steering with σ(q) replaced by another harm classifier (scans.steering.harm): the `tune` stage
    validates every classifier of `classify.compare`, picks `classifier` (`best`, a kind, or kind/anchors) and
    chooses α and the steering layers for its signs on the validation split, as it does for SCANS (tuned)."""

    classifier: str = "best"
    kind: str | None = None
    anchors: str | None = None

    def resolve(self, run) -> ScansClassifier:
        if self.alpha is not None:
            return self
        c: TunedClassifier = run.artifact("tuned").classifier
        return replace(
            self,
            name=f"{self.name} ({c.kind}, {c.anchors} anchors)",
            alpha=c.steering.alpha,
            steer_layers=c.steering.steer_layers,
            classify_layers=c.layers,
            threshold=c.threshold,
            kind=c.kind,
            anchors=c.anchors,
        )

    def upstream(self, run) -> dict:
        return {
            "extract": run.key("vectors"),
            "classifier": run.key("classifier", kind=self.kind, anchors=self.anchors),
        }

    def scores(self, run, prompts, name) -> torch.Tensor:
        """The classifier's per-layer scores, whose sign (at its 𝓛 and 𝒯) replaces σ(q)."""
        return run.artifact("classifier_scores", kind=self.kind, anchors=self.anchors, name=name, prompts=list(prompts))

    def response_inputs(self, coefficients) -> dict:
        out = super().response_inputs(coefficients)
        for k in ("classifier", "kind", "anchors"):
            out.pop(k)
        return out


def _vectors(run, normalize: bool) -> torch.Tensor:
    return steering_vectors(run.artifact("vectors")["mean_difference"], normalize)


def query_similarities(run, texts: Sequence[str], direction: torch.Tensor, response: str) -> torch.Tensor:
    """(N, L) similarities of queries with the harm direction (Eqs. 2-3), in `classify.batch_size` batches."""
    c = run.cfg.classify
    return classify_queries(
        run.lm.model, run.lm.chat, list(texts), direction, c.batch_size, response=response
    ).layer_similarities


def layer_similarities(run, prompts: Sequence, name: str | None) -> torch.Tensor:
    """(N, L) similarities: cached per set by the `classify` stage, or computed afresh (name None)."""
    if name is not None:
        return run.artifact("similarities", name=name, prompts=list(prompts))
    direction = run.artifact("vectors")["harm_direction"]
    return query_similarities(run, [p.text for p in prompts], direction, run.cfg.classify.response)


@dataclass(frozen=True)
class ActAdd(Method):
    """SCANS's steering with σ(q) replaced by "always benign": -α·v on every query. α and the steering layers are the
    headline SCANS row's unless given."""

    alpha: float | None = None
    steer_layers: object = None
    positions: str = "from_instruction_end"
    normalize: bool = True

    def __post_init__(self):
        object.__setattr__(self, "steer_layers", layer_spec(self.steer_layers))

    def resolve(self, run) -> ActAdd:
        head = headline(run)
        alpha = head.alpha if self.alpha is None else float(self.alpha)
        layers = self.steer_layers
        layers = head.steer_layers if layers is None else layers
        if not isinstance(layers, tuple):
            layers = tuple(run.layers_of(layers))
        return replace(self, alpha=alpha, steer_layers=layers)

    def upstream(self, run) -> dict:
        return {"extract": run.key("vectors")}

    def intervention(self, run) -> Steering:
        return Steering(_vectors(run, self.normalize), self.steer_layers, float(self.alpha), self.positions)

    def coefficients(self, run, prompts, name) -> torch.Tensor:
        return -torch.ones(len(prompts)) * float(self.alpha)
