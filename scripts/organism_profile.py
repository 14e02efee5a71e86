"""The refusal profile of a model organism build on the validation analogues of Table 2's kinds of column.

Builds the organism that the overrides describe (the `align` stage, cached under its key), then generates its
Default responses on the organism's validation sets (`align.validation`, after the disjointness rule) and prints the
refusal rate of each set with its 95% Wilson interval, grouped by kind: ordinary (AlpacaEval), look-alike
(JBB-benign, OKTest held-out) and harmful (JBB-harmful, StrongREJECT). Builds are compared here, never on Table 2's
sets; `--table2` adds Table 2's profile of the chosen build, for the report.

    python scripts/organism_profile.py --overrides align.train.learning_rate=1e-4 --out /tmp/lr1e-4.json
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
from hydra import compose, initialize_config_dir

from scans.config import CONFIG_DIR
from scans.judge import flags_by_label
from scans.methods.default import Default
from scans.report.organism import KIND_OF_SET, VALIDATION_KINDS
from scans.report.uncertainty import wilson
from scans.stages import Run, align, steer


def profile(r: Run, sets: dict) -> dict:
    responses = steer.respond_sets(r, Default(), sets)
    out = {}
    for name, rows in responses.items():
        flags = flags_by_label(r.cfg.judge.fit, {name: rows})[name]
        lo, hi = wilson(int(flags.sum()), len(flags))
        out[name] = {"n": len(flags), "refusal": 100 * float(np.mean(flags)), "lo": lo, "hi": hi}  # percent
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--overrides", nargs="*", default=[], help="config overrides of the build (align.*, model=...)")
    parser.add_argument("--limit", type=int, default=64, help="prompts per validation set, before the rule")
    parser.add_argument("--table2", action="store_true", help="also Table 2's sets (only for a build already chosen)")
    parser.add_argument("--out", help="write the profile as JSON here")
    args = parser.parse_args()
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose(
            "config", overrides=["model=smollm2_organism", f"align.validation.limit={args.limit}", "stage=align",
                                 *args.overrides],
        )  # fmt: skip
    r = Run(cfg)
    start = time.perf_counter()
    align.run(r)
    built = time.perf_counter() - start
    result = {"overrides": args.overrides, "align_key": align.key(r), "build_seconds": built,
              "validation": profile(r, align.validation(r)), "summary": align.load_summary(r)}  # fmt: skip
    if args.table2:
        result["table2"] = profile(r, r.eval_sets)
    for part in ("validation", "table2"):
        for name, p in result.get(part, {}).items():
            kind = VALIDATION_KINDS.get(name, KIND_OF_SET.get(name, ""))
            print(f"{part:10} {name:16} {kind:10} {p['refusal']:5.1f} [{p['lo']:5.1f}, {p['hi']:5.1f}] n={p['n']}")
    print(f"build {built:.0f} s, {result['summary']['steps']} steps, loss {result['summary']['last_loss']:.3f}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
