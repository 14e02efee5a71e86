"""Benchmark the generation engine against the machine's limit and against transformers' `generate`, in one run, on
the configured model (the organism by default), and write `results/report/<model>/bench.md` and `bench.csv`:

1. the matmul-only bound at each batch size: every linear layer of one decoding step, lm_head included, as
   `torch.nn.functional.linear` on the model's own weights and random inputs of the decode shapes (best of
   `--repeats`), as tokens/s;
2. the engine (`scans.steering.generate`, per-row SCANS steering on, signs alternating) at each batch size: end to
   end (prefill included), and its decoding phase alone ((n - 1) steps: the time of n new tokens less that of one);
3. plain HF `generate` (no steering) on the same prompts at each batch size.

Every arm generates exactly `--new-tokens` tokens from the same XSTest prompts. Part 4 (`--table2`) times steered
generation of Table 2's prompts (Default and the headline SCANS row, its real vectors and signs) on the previous path
(HF `generate`, one set at a time, batch 32) against the engine (every set together, the default batch), counts the
responses that differ and gives each set's refusal rate on both paths; `--previous-dtype float32` times the
previous path on the same weights in fp32 too (the organism's precision before `model.dtype: auto`).

    python scripts/bench_engine.py [--batch-sizes 1 16 64 128 256] [--new-tokens 32] [--table2]
        [--previous-dtype float32] [--overrides ...]
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from pathlib import Path

import pandas as pd
import torch
from hydra import compose, initialize_config_dir

from scans import methods
from scans.artifacts import write_text_atomic
from scans.cli import CONFIG_DIR
from scans.config import parse_layers
from scans.data import load_prompts
from scans.judge import judge_flags
from scans.models import encode
from scans.models.loading import resolve_dtype
from scans.report.run_record import machine
from scans.stages import Run, run_stage
from scans.steering import DecodingConfig, Steering, generate


def bound(model, batch: int, repeats: int) -> float:
    """Tokens/s of one decoding step's linear layers alone (lm_head included), best of `repeats`."""
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    device = linears[0].weight.device
    inputs = {
        (lin.in_features, lin.weight.dtype): torch.randn(batch, lin.in_features, dtype=lin.weight.dtype, device=device)
        for lin in linears
    }
    best = float("inf")
    with torch.no_grad():
        for _ in range(repeats + 1):  # the first is a warm-up
            sync(device)
            t = time.perf_counter()
            for lin in linears:
                torch.nn.functional.linear(inputs[(lin.in_features, lin.weight.dtype)], lin.weight)
            sync(device)
            best = min(best, time.perf_counter() - t)
    return batch / best


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device, repeats: int) -> float:
    """Median seconds of `fn()` over `repeats` runs."""
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 64, 128, 256])
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1, help="timed runs per arm (median); the bound takes best of 5")
    ap.add_argument("--table2", action="store_true", help="also time Table 2's steered prompts, old path vs engine")
    ap.add_argument(
        "--previous-dtype", nargs="*", default=[], help="--table2's previous path in these precisions too (float32)"
    )
    ap.add_argument("--overrides", nargs="*", default=[], help="Hydra overrides, e.g. model=llama2_7b_chat")
    args = ap.parse_args()

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=args.overrides)
    r = Run(cfg)
    lm = r.lm
    device = lm.device
    default_batch = int(cfg.generation.batch_size)
    sizes = sorted({*args.batch_sizes, 16, default_batch})
    layers = parse_layers(cfg.steer.layers, lm.num_layers, "steer.layers")
    g = torch.Generator().manual_seed(0)
    vectors = torch.randn(lm.num_layers, lm.model.config.hidden_size, generator=g)
    spec = Steering(vectors / vectors.norm(dim=-1, keepdim=True), layers, float(cfg.steer.alpha), cfg.steer.positions)
    prompts = [encode(lm.chat, p.text) for p in load_prompts("xstest")]
    n_tok = args.new_tokens
    rows = []
    where = machine(device)  # measures the machine's GEMM rate: once, before the arms
    print(f"model {cfg.model.name}, {where}, {n_tok} new tokens")
    for bs in sizes:
        enc = [prompts[i % len(prompts)] for i in range(bs)]
        signs = torch.tensor([(-1.0) ** i for i in range(bs)])
        fixed = DecodingConfig(n_tok, cfg.generation.repetition_penalty, bs, min_new_tokens=n_tok)
        one = dataclasses.replace(fixed, max_new_tokens=1, min_new_tokens=1)
        hf = dataclasses.replace(fixed, engine="hf")
        generate(lm.model, lm.tokenizer, enc[:2], dataclasses.replace(one, batch_size=2))  # warm-up
        engine_s = timed(lambda: generate(lm.model, lm.tokenizer, enc, fixed, spec, signs), device, args.repeats)
        first_s = timed(lambda: generate(lm.model, lm.tokenizer, enc, one, spec, signs), device, args.repeats)
        hf_s = timed(lambda: generate(lm.model, lm.tokenizer, enc, hf), device, args.repeats)
        row = {
            "model": cfg.model.name,
            "batch_size": bs,
            "default": bs == default_batch,
            "bound_tok_s": bound(lm.model, bs, 5),
            "engine_tok_s": bs * n_tok / engine_s,
            "engine_decode_tok_s": bs * (n_tok - 1) / max(engine_s - first_s, 1e-9),
            "hf_tok_s": bs * n_tok / hf_s,
        }
        rows.append(row)
        print({k: round(v, 1) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    df = pd.DataFrame(rows)
    hf16 = float(df.loc[df.batch_size == 16, "hf_tok_s"].iloc[0])
    df["engine_over_bound"] = df["engine_tok_s"] / df["bound_tok_s"]
    df["decode_over_bound"] = df["engine_decode_tok_s"] / df["bound_tok_s"]
    df["engine_over_hf16"] = df["engine_tok_s"] / hf16
    extra = None
    if args.table2:
        previous = {resolve_dtype(cfg.model.dtype, cfg.model.device): r}
        for dtype in args.previous_dtype:  # the same weights in another precision, e.g. the fp32 of an older default
            with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
                other = compose("config", overrides=[*args.overrides, f"model.dtype={dtype}"])
            previous.setdefault(resolve_dtype(dtype, other.model.device), Run(other))
        extra = table2_comparison(r, default_batch, previous)
    write(r, df, n_tok, where, extra)


def table2_comparison(r: Run, batch: int, previous: dict[str, Run]) -> list[dict]:
    """Default and the headline SCANS row on Table 2's prompts: the previous path (HF generate, one set at a time,
    batch 32) on each model of `previous` (the run's own, and the same weights in another precision where
    `--previous-dtype` asks) against the engine (every set together at `batch`), same interventions, signs and
    decoding. Seconds, responses that differ from the engine's, and each set's refusal rate (the run's judge)."""
    run_stage("classify", r)
    lm, g, sets = r.lm, r.cfg.generation, r.eval_sets
    old = DecodingConfig(g.max_new_tokens, g.repetition_penalty, 32, engine="hf")
    new = DecodingConfig(g.max_new_tokens, g.repetition_penalty, batch)
    enc = {n: [encode(lm.chat, p.text) for p in ps] for n, ps in sets.items()}
    asked = {n: [p.text for p in ps] for n, ps in sets.items()}

    def rates(responses: dict[str, list[str]]) -> dict[str, float]:
        return {n: 100 * sum(judge_flags(r.cfg.judge.name, responses[n], asked[n])) / len(asked[n]) for n in sets}

    out = []
    for method in (methods.Default(), methods.headline(r)):
        iv = methods.intervention(r, method)
        coefs = {n: method.coefficients(r, ps, n) for n, ps in sets.items()}
        stacked = None if coefs[next(iter(sets))] is None else torch.cat([coefs[n] for n in sets])
        t = time.perf_counter()
        flat = generate(lm.model, lm.tokenizer, [e for n in sets for e in enc[n]], new, intervention=iv,
                        coefficients=stacked)  # fmt: skip
        row = {"method": method.name, "prompts": len(flat), "new_s": time.perf_counter() - t, "batch": batch}
        after, start = {}, 0
        for n in sets:
            after[n], start = flat[start : start + len(enc[n])], start + len(enc[n])
        row["rates"], row["previous"] = rates(after), {}
        for label, prev in previous.items():
            t = time.perf_counter()
            before = {n: generate(prev.lm.model, prev.lm.tokenizer, enc[n], old, intervention=iv,
                                  coefficients=coefs[n]) for n in sets}  # fmt: skip
            row["previous"][label] = {
                "s": time.perf_counter() - t,
                "differ": sum(a != b for n in sets for a, b in zip(before[n], after[n])),
                "rates": rates(before),
            }
        out.append(row)
        print(out[-1], flush=True)
    return out


def write(r: Run, df: pd.DataFrame, new_tokens: int, where: dict, table2: list[dict] | None) -> None:
    folder = Path(r.cfg.paths.report) / r.model_name
    cols = ["model", "batch_size", "default", "bound_tok_s", "engine_tok_s", "hf_tok_s", "engine_decode_tok_s"]
    write_text_atomic(folder / "bench.csv", df[cols].to_csv(index=False, float_format="%.1f"))
    shown = df.rename(
        columns={
            "batch_size": "batch",
            "bound_tok_s": "matmul bound",
            "engine_tok_s": "engine",
            "engine_decode_tok_s": "engine, decoding only",
            "hf_tok_s": "HF generate",
            "engine_over_bound": "engine / bound",
            "decode_over_bound": "decoding / bound",
            "engine_over_hf16": "engine / HF at 16",
        }  # fmt: skip
    ).drop(columns=["model"])
    d = df[df["default"]].iloc[0]
    md = [
        f"# Generation speed against the limit ({r.model_name})",
        "",
        f"`python scripts/bench_engine.py` (`make bench`) on {where['device']}, {where['torch threads']} torch threads"
        f" ({where['cores']} cores); tokens/s, exactly {new_tokens} new tokens per row from XSTest prompts, greedy"
        " with repetition penalty 1.1. The engine steers every row (SCANS's hook, signs alternating); HF `generate` is"
        " the plain model. The matmul bound is one decoding step's linear layers alone (lm_head included) on the"
        " model's own weights: it leaves out the prefill, which the end-to-end columns include, so the decoding-only"
        " column is the one to hold against it.",
        "",
        "Machine: "
        + "; ".join(f"{k}: {v}" for k, v in where.items() if k not in ("device", "torch threads", "cores"))
        + ".",
        "",
        shown.to_markdown(index=False, floatfmt=".2f"),
        "",
        f"At the default batch ({int(d.batch_size)}): {d.engine_over_hf16:.2f}x HF `generate` at batch 16 end to end;"
        f" decoding at {d.decode_over_bound:.2f} of the matmul bound ({d.engine_over_bound:.2f} end to end).",
    ]
    if table2:
        labels = list(table2[0]["previous"])
        md += [
            "",
            f"## Table 2's prompts, the previous path against the engine (up to {r.cfg.generation.max_new_tokens} new"
            " tokens)",
            "",
            "The previous path is HF `generate`, one set at a time, batch 32, with the model in each precision named;"
            f" the engine generates every set together at batch {table2[0]['batch']} in the run's"
            f" ({labels[0]}). Same interventions, signs (σ(q) in the run's precision) and decoding; refusal rates (%)"
            f" by the run's judge (`{r.cfg.judge.name}`) on each path.",
            "",
            "| row | prompts | path | seconds | engine's speed-up | responses that differ from the engine's |",
            "|---|---|---|---|---|---|",
        ]
        for t in table2:
            md += [
                f"| {t['method']} | {t['prompts']} | previous, {label} | {p['s']:.1f} | {p['s'] / t['new_s']:.2f}x |"
                f" {p['differ']} |"
                for label, p in t["previous"].items()
            ] + [f"| {t['method']} | {t['prompts']} | engine, {labels[0]} | {t['new_s']:.1f} | | |"]
        md += [
            "",
            "| row | path | " + " | ".join(table2[0]["rates"]) + " |",
            "|---|---|" + "---|" * len(table2[0]["rates"]),
        ]
        for t in table2:
            paths = [
                *((f"previous, {label}", p["rates"]) for label, p in t["previous"].items()),
                ("engine", t["rates"]),
            ]
            md += [
                f"| {t['method']} | {path} | " + " | ".join(f"{v:.1f}" for v in x.values()) + " |" for path, x in paths
            ]
    write_text_atomic(folder / "bench.md", "\n".join(md) + "\n")
    print("\n".join(md))


if __name__ == "__main__":
    main()
