"""Benchmark, side by side in one run on the configured model (the organism by default):

1. steered (SCANS hook, per-row signs) vs unsteered generation throughput at each batch size;
2. the project's batched SCANS pipeline (σ(q) in batches, then batched steered generation) vs a loop that mimics
   the authors' code (per prompt: a classification forward pass, then generation at batch size 1).

    python scripts/bench_steering.py [--new-tokens 32] [--repeats 3] [--batch-sizes 1 16] [--pipeline-prompts 16]

Arms generate exactly the same number of tokens (min_new_tokens = max_new_tokens) from the same XSTest prompts and
alternate within each repeat so that machine noise hits both. Prints tokens/s, peak memory and the ratios.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from hydra import compose, initialize_config_dir

from scans import methods
from scans.capability.cost import authors_loop, batched_scans, measure
from scans.cli import CONFIG_DIR
from scans.config import parse_layers
from scans.data import load_prompts
from scans.models import encode
from scans.stages import Run, run_stage
from scans.stages.cost import device_name, scans_spec
from scans.steering import DecodingConfig, Steering, generate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--pipeline-prompts", type=int, default=16, help="prompts for the pipeline comparison (0: skip)")
    ap.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides, e.g. model=llama2_7b_chat")
    args = ap.parse_args()

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=args.overrides)
    r = Run(cfg)
    lm = r.lm  # the configured model (the organism by default; built or reused)
    device = lm.device
    layers = parse_layers(cfg.steer.layers, lm.num_layers, "steer.layers")
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(lm.num_layers, lm.model.config.hidden_size, generator=g)
    vectors = vectors / vectors.norm(dim=-1, keepdim=True)
    spec = Steering(vectors, layers, float(cfg.steer.alpha), cfg.steer.positions)
    prompts = [p.text for p in load_prompts("xstest")]
    print(f"model {cfg.model.name} on {device_name(device)}, {args.new_tokens} new tokens, {args.repeats} repeats")
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
    if args.pipeline_prompts:
        pipeline(r, prompts[: args.pipeline_prompts], args.new_tokens, args.repeats, max(args.batch_sizes))


def pipeline(r: Run, prompts: list[str], new_tokens: int, repeats: int, batch: int) -> None:
    """SCANS end to end (σ(q) + steered generation) on the same prompts: batched vs the authors' one-by-one loop."""
    run_stage("extract", r)  # the real d_harm and v_r (reused when they exist)
    spec = scans_spec(r, methods.load(r, methods.HEADLINE[False]))
    lm = r.lm
    dec = DecodingConfig(new_tokens, 1.1, batch, min_new_tokens=new_tokens)
    arms = {"batched": batched_scans, "authors loop": authors_loop}
    seconds: dict[str, list[float]] = {arm: [] for arm in arms}
    peaks: dict[str, float] = dict.fromkeys(arms, 0.0)
    for _ in range(repeats):
        for arm, fn in arms.items():
            m = measure(lambda fn=fn: fn(lm.model, lm.tokenizer, lm.chat, prompts, spec, dec), lm.device)
            seconds[arm].append(m.seconds)
            peaks[arm] = max(peaks[arm], m.peak_mem_mb)
    tokens = len(prompts) * new_tokens
    print(f"\nSCANS pipeline on {len(prompts)} prompts (σ(q) + {new_tokens} steered tokens each), batch {batch}:")
    print(f"{'arm':>13} {'seconds':>8} {'tok/s':>8} {'peak MB':>8}")
    for arm in arms:
        t = statistics.median(seconds[arm])
        print(f"{arm:>13} {t:>8.2f} {tokens / t:>8.1f} {peaks[arm]:>8.0f}")
    speedup = statistics.median(seconds["authors loop"]) / statistics.median(seconds["batched"])
    print(f"batched / authors-loop speed-up: {speedup:.2f}x (goal >= 3x)")


if __name__ == "__main__":
    main()
