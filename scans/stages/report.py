"""Stage `report`: Table 2 (Markdown and CSV) from the judged artifacts of the current config."""

from __future__ import annotations

import logging
from pathlib import Path

from scans.artifacts import write_text_atomic
from scans.data import TABLE2_SETS
from scans.errors import ConfigError
from scans.report.table2 import table2, table2_row, to_markdown
from scans.stages import judge, steer
from scans.stages.context import Run

log = logging.getLogger(__name__)


def run(r: Run) -> Path:
    missing = [s for s in TABLE2_SETS if s not in r.eval_sets]
    if missing:
        raise ConfigError(f"Table 2 needs data.eval_sets to include {', '.join(missing)}")
    rows = []
    for method in steer.methods(r):
        counts = {}
        for name in TABLE2_SETS:
            s = judge.load(r, method, name, r.eval_sets[name])
            counts[name] = (s["n"], s["refusals"])
        rows.append(table2_row(r.model_name, method, counts))
    df = table2(rows)
    out = Path(r.cfg.paths.report)
    sizes = {name: len(r.eval_sets[name]) for name in TABLE2_SETS}
    write_text_atomic(out / "table2.csv", df.to_csv(index=False, float_format="%.2f"))
    write_text_atomic(out / "table2.md", "# Table 2: refusal rate (%)\n\n" + to_markdown(df, sizes))
    print(df.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    log.info("report: wrote %s", out / "table2.md")
    return out
