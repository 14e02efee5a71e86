"""The record of the run that made a model's report: commit, machine and each stage's wall time (run.md, run.csv)."""

from __future__ import annotations

import os
import platform
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from scans.artifacts import write_text_atomic
from scans.organism.train import native_autocast


def commit() -> str:
    """The checkout's commit, with "+ uncommitted changes" when the tree differs from it; "unknown" outside git."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
        dirty = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no", "--", "scans", "configs"],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + (" + uncommitted changes to scans/ or configs/" if dirty.stdout.strip() else "")


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo), or what `platform` knows elsewhere."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gemm_gflops(device: torch.device, n: int = 1024, repeats: int = 5) -> float:
    """fp32 GFLOP/s of one n x n x n matmul on `device`, best of `repeats` (about a second on a slow CPU): the
    machine's speed in one number, so that wall times from different machines can be compared."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t = time.perf_counter()
        torch.mm(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def machine(device: torch.device) -> dict:
    """What a run's times depend on: cores, threads, the device, and for a CPU its model, vector capability and
    bf16 units (the organism trains in bf16 only with them), with the measured fp32 matmul rate."""
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    facts = {"cores": os.cpu_count(), "torch threads": torch.get_num_threads(), "device": f"{device.type}: {where}"}
    if device.type == "cpu":
        facts["cpu"] = f"{cpu_model()}, {torch.backends.cpu.get_cpu_capability()}"
        facts["bf16 matmul units"] = "yes" if native_autocast(device) else "no"
    facts["fp32 GEMM, 1024³"] = f"{gemm_gflops(device):.0f} GFLOP/s"
    return facts


def table(seconds: dict[str, float]) -> pd.DataFrame:
    rows = [{"stage": s, "seconds": round(t, 1)} for s, t in seconds.items()]
    return pd.DataFrame([*rows, {"stage": "total", "seconds": round(sum(seconds.values()), 1)}])


def write(folder: Path, model: str, command: str, seconds: dict[str, float], device: torch.device) -> None:
    """run.csv (stage, seconds, a `total` row) and run.md in the model's report folder."""
    df = table(seconds)
    write_text_atomic(folder / "run.csv", df.to_csv(index=False))
    shown = df.assign(minutes=(df["seconds"] / 60).round(1))
    facts = {"command": f"`{command}`", "commit": commit(), **machine(device),
             "finished": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}  # fmt: skip
    md = [
        f"# The run that made this report ({model})",
        "",
        *(f"- {k}: {v}" for k, v in facts.items()),
        "",
        "Wall time of each stage, in pipeline order (a stage whose artifacts already existed reads them and takes",
        "seconds; a stage's missing inputs are built inside it and counted there):",
        "",
        shown.to_markdown(index=False),
        "",
    ]
    write_text_atomic(folder / "run.md", "\n".join(md))
