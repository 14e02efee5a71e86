"""Stage `anchor`: layer anchoring (Table 1) from the extracted refusal vectors, no forward pass.

Writes, per segment, the top tokens of its first principal component read through the unembedding, and per layer
the refusal score. It also records the steering layers the score suggests (the window of `len(steer layers)`
consecutive layers with the highest mean score); `steer.layers=anchor` makes every stage steer those layers.
"""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from scans.analysis import anchoring
from scans.artifacts import read_json, stable_hash, write_json
from scans.config import parse_layers
from scans.stages.context import Run
from scans.stages.producers import produces

log = logging.getLogger(__name__)
STAGE = "anchor"
RESULT = "anchoring.json"


def key(r: Run) -> str:
    a = r.cfg.analysis
    segments = None if a.segments is None else list(a.segments)
    return stable_hash({"extract": r.extract_key, "segments": segments, "top_k": a.top_k,
                        "lexicon": anchoring.REFUSAL_LEXICON, "width": _width(r)})  # fmt: skip


def _width(r: Run) -> int:
    spec = r.cfg.model.hparams.steer_layers
    return len(parse_layers(spec, r.num_layers, "model.hparams.steer_layers"))


def top_window(scores: list[float], width: int) -> list[int]:
    """The `width` consecutive layers with the highest mean score (ties: the earliest)."""
    means = [sum(scores[i : i + width]) / width for i in range(len(scores) - width + 1)]
    start = max(range(len(means)), key=lambda i: (means[i], -i))
    return list(range(start, start + width))


def _load(r: Run, path: Path) -> dict:
    return read_json(path / RESULT)


@produces("anchor", STAGE, key, _load)
def build(r: Run, tmp: Path) -> dict:
    vectors = r.artifact("vectors")["refusal_vectors"]
    unit = vectors / vectors.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    model, tokenizer = r.lm.model, r.lm.tokenizer
    unembedding = model.get_output_embeddings().weight.detach()
    norm = getattr(model.get_decoder(), "norm", None)
    norm_weight = None if norm is None or getattr(norm, "weight", None) is None else norm.weight.detach()
    ids = anchoring.lexicon_ids(tokenizer)
    with torch.no_grad():
        per_layer = [
            anchoring.refusal_score(anchoring.vocabulary_logits(unit[layer], unembedding, norm_weight), ids)
            for layer in range(unit.shape[0])
        ]
        segs = anchoring.segments(unit.shape[0], None if r.cfg.analysis.segments is None else r.cfg.analysis.segments)
        table = []
        for name, layers in segs.items():
            if not layers:
                continue
            logits = anchoring.vocabulary_logits(anchoring.first_component(unit[layers]), unembedding, norm_weight)
            table.append(
                {
                    "segment": name,
                    "layers": f"{layers[0]}-{layers[-1]}",
                    "top_tokens": anchoring.top_tokens(logits, tokenizer, r.cfg.analysis.top_k),
                    "refusal_score": anchoring.refusal_score(logits, ids),
                }
            )
    result = {
        "segments": table,
        "layer_refusal_score": per_layer,
        "lexicon_tokens": tokenizer.convert_ids_to_tokens(ids),
        "suggested_steer_layers": top_window(per_layer, _width(r)),
        "projection": "unit refusal vector (or segment PC1) x final-norm gain, then the LM head",
    }
    write_json(tmp / RESULT, result)
    log.info("anchor: %s; suggested steering layers %s", [(t["segment"], t["top_tokens"][:5]) for t in table],
             result["suggested_steer_layers"])  # fmt: skip
    return {"extract": r.extract_key}


def run(r: Run) -> dict:
    return r.artifact("anchor")
