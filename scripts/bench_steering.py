"""Benchmark: steered (SCANS hook, per-row signs) vs unsteered generation throughput, side by side in one run.

    python scripts/bench_steering.py [--new-tokens 32] [--repeats 3] [--batch-sizes 1 16]

Both arms generate exactly the same number of tokens (min_new_tokens = max_new_tokens) from the same XSTest
prompts; the arms alternate within each repeat so that machine noise hits both. Prints tokens/s and the ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from hydra import compose, initialize_config_dir

from scans.cli import CONFIG_DIR
from scans.config import parse_layers
from scans.data import load_prompts
from scans.models import encode
from scans.stages import Run
from scans.steering import DecodingConfig, Steering, generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides, e.g. model=llama2_7b_chat")
    args = ap.parse_args()

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=args.overrides)
    lm = Run(cfg).lm  # the configured model (the organism by default; built or reused)
    device = lm.device
    layers = parse_layers(cfg.steer.layers, lm.num_layers, "steer.layers")
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(lm.num_layers, lm.model.config.hidden_size, generator=g)
    vectors = vectors / vectors.norm(dim=-1, keepdim=True)
    spec = Steering(vectors, layers, float(cfg.steer.alpha), cfg.steer.positions)
    prompts = [p.text for p in load_prompts("xstest")]
    print(f"model {cfg.model.name} on {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'}),"
          f" {torch.get_num_threads()} threads, {args.new_tokens} new tokens, {args.repeats} repeats")
    print(f"{'batch':>5} {'default tok/s':>14} {'steered tok/s':>14} {'ratio':>7}")
    for bs in args.batch_sizes:
        enc = [encode(lm.chat, q) for q in prompts[:bs]]
        signs = torch.tensor([(-1.0) ** i for i in range(bs)])  # a mixed batch, as SCANS produces
        dec = DecodingConfig(args.new_tokens, 1.1, bs, min_new_tokens=args.new_tokens)
        generate(lm.model, lm.tokenizer, enc, DecodingConfig(2, 1.1, bs))  # warm-up
        times: dict[str, list[float]] = {"default": [], "steered": []}
        for _ in range(args.repeats):
            for arm in ("default", "steered"):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                t = time.perf_counter()
                generate(lm.model, lm.tokenizer, enc, dec, spec if arm == "steered" else None, signs)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times[arm].append(time.perf_counter() - t)
        tps = {arm: bs * args.new_tokens / statistics.median(ts) for arm, ts in times.items()}
        print(f"{bs:>5} {tps['default']:>14.1f} {tps['steered']:>14.1f} {tps['steered'] / tps['default']:>7.3f}")


if __name__ == "__main__":
    main()
