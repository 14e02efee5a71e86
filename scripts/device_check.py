"""The pipeline on one GPU at the paper's sizes where they fit in about 8 minutes: the organism (built on the GPU if
its artifact is not there) through extract, classify, steer, judge, capability and cost, with all 450 XSTest
prompts, 256 new tokens, 2048-token perplexity windows and an MMLU slice (one question per subject).

It fails if any module ran a forward pass on a CPU tensor (a global forward pre-hook watches every module that holds
weights), if a weight is not on the GPU, or if the weights' dtype is not the one `model.dtype` asks for. It prints
each stage's time, the refusal rates and Tables 3-4. Hydra overrides given on the command line come last, e.g.
`python scripts/device_check.py model.dtype=bfloat16`. Run through scripts/device_check.sh.

`--dry-run` runs the same script on the CPU at smoke sizes (the flow, not the GPU): a check of the script itself
before a GPU lease is spent on it.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

OVERRIDES = [
    "model.device=cuda",
    "data.eval_sets=[xstest_safe,xstest_unsafe]",
    "data.limit=null",  # all 250 safe + 200 unsafe XSTest prompts
    "generation.max_new_tokens=256",
    "generation.batch_size=64",
    "methods=[default,scans_paper]",
    "steer.tuned=false",
    "capability.perplexity.window=2048",
    "capability.perplexity.windows=8",
    "capability.perplexity.batch_size=4",
    "capability.mmlu.per_subject=1",
    "capability.mmlu.batch_size=16",
    "capability.xsum.documents=32",
    "paths.artifacts=artifacts-device",
    "paths.report=results-device",
]
STAGES = ("align", "extract", "classify", "steer", "judge", "capability", "cost")


class CpuWatch:
    """Records every forward pass of a module with its own weights that received a tensor on the CPU."""

    def __init__(self):
        self.offences: list[str] = []
        self.stage = ""

    def __call__(self, module, args):
        own = next(module.parameters(recurse=False), None)  # Linear, Embedding, norms: where the arithmetic is
        if own is None:
            return None
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if any(t.device.type == "cpu" for t in tensors) or own.device.type == "cpu":
            self.offences.append(f"{self.stage}: {type(module).__name__} ran on the CPU")
        return None


DRY_RUN = ["model.device=cpu", "experiment=smoke", "data.limit=4", "generation.max_new_tokens=4",
           "capability.perplexity.window=128", "capability.perplexity.windows=2", "capability.xsum.documents=2",
           "capability.xsum.max_new_tokens=8", "capability.mmlu.crosscheck=2", "capability.mmlu.shots=1",
           "capability.mmlu.max_length=256", "capability.mmlu.batch_size=4", "capability.cost.prompts=2",
           "capability.cost.batch_sizes=[1,2]"]  # fmt: skip


def main(argv: list[str]) -> int:
    dry = "--dry-run" in argv
    argv = [a for a in argv if a != "--dry-run"]
    if not dry and not torch.cuda.is_available():
        print("device_check: no CUDA device here; nothing checked (run it on a GPU machine)", file=sys.stderr)
        return 2
    sync = torch.cuda.synchronize if not dry else (lambda: None)
    from hydra import compose, initialize_config_dir

    from scans.cli import CONFIG_DIR
    from scans.models.loading import DTYPES
    from scans.report.capability import table3, table3_markdown, table4_markdown
    from scans.stages import Run, cost, judge, run_stage

    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*OVERRIDES, *(DRY_RUN if dry else []), *argv])
    r = Run(cfg)
    where = "CPU (dry run)" if dry else torch.cuda.get_device_name(0)
    print(f"device_check: {where}, torch {torch.__version__}, model {cfg.model.name} "
          f"({cfg.model.dtype})", flush=True)  # fmt: skip
    watch = CpuWatch()
    handle = torch.nn.modules.module.register_module_forward_pre_hook(watch)
    timings = {}
    try:
        for stage in STAGES:
            if stage == "align" and cfg.model.source.kind != "organism":
                continue
            watch.stage = stage
            sync()
            start = time.perf_counter()
            if stage == "align":
                # The base model (SmolLM2) answers the organism's benign prompts; its weights go to the GPU too.
                from scans.stages import align

                align.run(r)
            else:
                run_stage(stage, r)
            sync()
            timings[stage] = time.perf_counter() - start
            print(f"device_check: {stage} {timings[stage]:.1f} s", flush=True)
    finally:
        handle.remove()
    params = list(r.lm.model.parameters())
    problems = list(dict.fromkeys(watch.offences))
    if dry:
        problems = []
    elif any(p.device.type != "cuda" for p in params):
        problems.append("some weights are not on the GPU")
    if {p.dtype for p in params} != {DTYPES[cfg.model.dtype]}:
        problems.append(f"weights in {sorted({str(p.dtype) for p in params})}, the config asks for {cfg.model.dtype}")
    from scans import methods
    from scans.stages import capability

    print("\nRefusal rate (%), all of XSTest:")
    for m in methods.rows(r):
        rates = {n: 100 * judge.load(r, m, n, p)["refusal_rate"] for n, p in r.eval_sets.items()}
        print(f"  {m.name:<28} " + "  ".join(f"{n} {v:5.1f}" for n, v in rates.items()))
    rows = capability.run(r)  # cached by the stage above
    c = cfg.capability
    sizes = {
        "MMLU": f"{c.mmlu.per_subject} per subject",
        "perplexity": f"{c.perplexity.windows} x {c.perplexity.window}",
    }
    items = {m.name: capability.items(r, m) for m in capability.methods(r)}  # the intervals of the targets
    print("\n" + table3_markdown(table3(rows), sizes, None, methods.headline(r).name, items))
    result = cost.run(r)
    print(table4_markdown(result, c.cost.max_new_tokens, c.cost.prompt_tokens))
    print("device_check: timings " + ", ".join(f"{k} {v:.0f} s" for k, v in timings.items())
          + f"; total {sum(timings.values()):.0f} s; peak GPU memory "
          f"{0 if dry else torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")  # fmt: skip
    if problems:
        print("device_check: FAILED\n  " + "\n  ".join(problems[:20]), file=sys.stderr)
        return 1
    if dry:
        print("device_check: dry run passed (the flow on the CPU; nothing about a GPU was checked)")
    else:
        print("device_check: passed (no forward pass on the CPU; weights on the GPU in the configured dtype)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
