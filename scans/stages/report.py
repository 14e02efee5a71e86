"""Stage `report`: Table 2 (Markdown and CSV) from the judged artifacts, and for the organism its behaviour
against the targets and the tuned row's validation record.

Table 2 keeps one block of rows per model: rerunning the report for one model replaces that model's rows and keeps
the others (each block was built from its own model's artifacts).
"""

from __future__ import annotations

import io
import logging
from pathlib import Path

import pandas as pd

from scans.artifacts import write_text_atomic
from scans.data import TABLE2_SETS
from scans.errors import ConfigError
from scans.report.organism import organism_table, organism_markdown
from scans.report.table2 import COLUMNS, table2, table2_row, to_markdown
from scans.report.tuning import tuning_markdown
from scans.stages import align, judge, steer, tune
from scans.stages.context import Run

log = logging.getLogger(__name__)


def counts(r: Run, method: steer.Method, sets) -> dict[str, tuple[int, int]]:
    out = {}
    for name in sets:
        s = judge.load(r, method, name, r.eval_sets[name])
        out[name] = (s["n"], s["refusals"])
    return out


def merged_table2(path: Path, rows: list[dict]) -> pd.DataFrame:
    new = table2(rows)
    if path.is_file():
        old = pd.read_csv(path)
        if list(old.columns) == COLUMNS:
            new = pd.concat([old[old["model"] != new["model"].iloc[0]], new], ignore_index=True)
    return new


def run(r: Run) -> Path:
    missing = [s for s in TABLE2_SETS if s not in r.eval_sets]
    if missing:
        raise ConfigError(f"Table 2 needs data.eval_sets to include {', '.join(missing)}")
    out = Path(r.cfg.paths.report)
    rows = [table2_row(r.model_name, m.name, counts(r, m, TABLE2_SETS)) for m in steer.methods(r)]
    df = merged_table2(out / "table2.csv", rows)
    sizes = {name: len(r.eval_sets[name]) for name in TABLE2_SETS}
    write_text_atomic(out / "table2.csv", df.to_csv(index=False, float_format="%.2f"))
    write_text_atomic(out / "table2.md", "# Table 2: refusal rate (%)\n\n" + to_markdown(df, sizes))
    print(df.to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    if r.cfg.steer.tuned:
        write_text_atomic(out / "tuning.md", tuning_markdown(tune.load(r), r.model_name))
    if (base := steer.base_run(r)) is not None:
        default = steer.Method(steer.DEFAULT)
        table = organism_table(
            {base.model_name: counts(base, default, TABLE2_SETS), r.model_name: counts(r, default, TABLE2_SETS)}
        )
        buf = io.StringIO()
        table.to_csv(buf, index=False, float_format="%.2f")
        write_text_atomic(out / "organism.csv", buf.getvalue())
        write_text_atomic(out / "organism.md", organism_markdown(table, align.load_summary(r), sizes, r.model_name))
    log.info("report: wrote %s", out)
    return out
