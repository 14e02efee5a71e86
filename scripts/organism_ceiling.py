"""How far a linear read of a base model's own states separates the organism's kinds of prompt: the ceiling that the
organism's top-layer recipe works under.

A logistic probe on the last prompt token's state at five depths, fitted on the default organism's training prompts
(refusal against helpful: `examples.jsonl` of its `align` artifact, built when missing), is scored on the organism's
validation sets only (`align.validation`; never Table 2's): AUROC of AlpacaEval (ordinary) against JBB-harmful and
StrongREJECT (harmful), and each set's share above the threshold that puts 15% of AlpacaEval above it (the ordinary
band's edge). Harmful shares below 95 there say that no threshold on that state meets both bands.

    python scripts/organism_ceiling.py                                            # SmolLM2-135M, the organism's base
    python scripts/organism_ceiling.py --model qwen2_5_coder_0_5b_instruct --out qwen.json   # a larger base
"""

from __future__ import annotations

import argparse
import json

import numpy as np
from hydra import compose, initialize_config_dir
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from scans.artifacts import read_jsonl
from scans.config import CONFIG_DIR
from scans.models import encode, load_model
from scans.stages import Run, align
from scans.steering.activations import hidden_states

ORDINARY, HARMFUL = ["alpaca_eval"], ["jbb_harmful", "strongreject"]
DEPTHS = (1 / 3, 1 / 2, 2 / 3, 5 / 6, 1)  # the last layer of each such share: 9, 14, 19, 24, 29 of SmolLM2-135M's 30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="a model config whose states to probe (default: the organism's base)")
    parser.add_argument("--out", help="write the table as JSON here")
    args = parser.parse_args()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["model=smollm2_organism"])
        other = compose("config", overrides=[f"model={args.model}"]) if args.model else None
    r = Run(cfg)
    examples = read_jsonl(align.model_path(r).parent / "examples.jsonl")
    validation = {name: [p.text for p in prompts] for name, prompts in align.validation(r).items()}
    lm = Run(other).lm if other is not None else load_model(cfg.model.base, cache_dir=r.model_cache)
    n_layers = len(lm.model.get_decoder().layers)
    layers = sorted({round(f * n_layers) - 1 for f in DEPTHS})

    def states(texts: list[str]) -> np.ndarray:
        rows = [encode(lm.chat, q).input_ids for q in texts]
        return hidden_states(lm.model, rows, [[-1]] * len(rows), layers, batch_size=32, desc="states").numpy()[:, 0]

    x, y = states([e["prompt"] for e in examples]), np.array([e["kind"] == "refusal" for e in examples])
    v = {name: states(texts) for name, texts in validation.items()}
    table = {}
    for i, layer in enumerate(layers):
        probe = LogisticRegression(C=0.1, max_iter=3000).fit(x[:, i], y)
        score = {name: probe.decision_function(s[:, i]) for name, s in v.items()}
        ordinary = np.concatenate([score[n] for n in ORDINARY])
        harmful = np.concatenate([score[n] for n in HARMFUL])
        labels = np.r_[np.zeros(len(ordinary)), np.ones(len(harmful))]
        edge = np.quantile(ordinary, 0.85)
        table[layer] = {
            "auroc": float(roc_auc_score(labels, np.r_[ordinary, harmful])),
            "harmful_above": 100 * float((harmful > edge).mean()),
            **{name: 100 * float((s > edge).mean()) for name, s in score.items()},
        }
        row = table[layer]
        print(f"layer {layer:2}: AUROC {row['auroc']:.3f}; at 15% of AlpacaEval, harmful {row['harmful_above']:.1f}%; "
              + ", ".join(f"{n} {row[n]:.1f}" for n in validation))  # fmt: skip
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"model": args.model or "organism base", "layers": table}, fh, indent=2)


if __name__ == "__main__":
    main()
