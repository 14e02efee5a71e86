"""The record of the run that made a model's report: commit, machine and each stage's wall time (run.md, run.csv)."""

from __future__ import annotations

import os
import platform
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import torch

from scans.artifacts import write_text_atomic


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


def machine(device: torch.device) -> dict:
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine()
    return {"cores": os.cpu_count(), "torch threads": torch.get_num_threads(), "device": f"{device.type}: {where}"}


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
