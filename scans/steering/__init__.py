"""The steering library: activations, the SCANS equations, the steering hook, generation. No Hydra, no file I/O."""

from scans.steering.activations import hidden_states, last_token_outputs, record_layer_outputs
from scans.steering.batching import PaddedBatch, pad_left
from scans.steering.classifier import Classification, classify, harm_reference
from scans.steering.generation import DecodingConfig, Steering, generate
from scans.steering.hook import POSITION_POLICIES, steering, steering_mask, steering_starts
from scans.steering.vectors import (
    harm_direction,
    harm_similarity,
    layer_similarities,
    refusal_vectors,
    steer_sign,
    transition,
)

__all__ = [
    "POSITION_POLICIES",
    "Classification",
    "DecodingConfig",
    "PaddedBatch",
    "Steering",
    "classify",
    "generate",
    "harm_direction",
    "harm_reference",
    "harm_similarity",
    "hidden_states",
    "last_token_outputs",
    "layer_similarities",
    "pad_left",
    "record_layer_outputs",
    "refusal_vectors",
    "steer_sign",
    "steering",
    "steering_mask",
    "steering_starts",
    "transition",
]
