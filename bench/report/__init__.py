"""The report: run directories (or W&B) → DataFrames → statistics → tables and figures."""
import sys
from dataclasses import replace
from pathlib import Path
from typing import Optional

from bench.errors import BenchError
from bench.report.figures import write_figures
from bench.report.frames import RUNS_CSV, Results, load_results, load_runs
from bench.report.tables import write_tables
from bench.runs import RunDir


def write_report(results_dir: Path, figures: bool = True, require_runs: bool = False, results: Optional[Results] = None,
                 out: Optional[Path] = None) -> str:
    """Rebuild the tables (and figures/) of `results_dir` from its run directories alone (or from
    `results`, read from W&B), without retraining; returns the Markdown table. A file that cannot
    be read is skipped with one line on stderr; with `require_runs`, a directory without a run to
    report is a one-line error. The tables and figures go to `out` (default: `results_dir`)."""
    results = load_results(results_dir) if results is None else results
    recipes = results.runs.dropna(subset=["recipe"]).drop_duplicates("recipe") if "recipe" in results.runs else []
    if len(recipes) > 1:
        (a, pa), (b, pb) = list(zip(recipes["recipe"], recipes["path"]))[:2]
        raise BenchError(f"{results_dir}: holds runs of recipe '{a}' ({pa}) and of recipe '{b}' ({pb}); a step's Δ "
                         "would be taken against another recipe's run: report each recipe's folder on its own; nothing was written")
    for line in results.skipped:
        print(line, file=sys.stderr)
    if require_runs and results.runs.empty:
        raise BenchError(f"{results_dir}: no finished run to report (no readable {RunDir.FINAL} below it, "
                         f"no {RUNS_CSV}); nothing was written")
    out = Path(results_dir if out is None else out)
    if out != Path(results_dir):   # the runs' rows go with the tables: runs.csv is written there too
        results = replace(results, from_runs_csv=False)
    markdown = write_tables(results, out)
    if figures:
        write_figures(results, out / "figures")
    return markdown


__all__ = ["load_results", "load_runs", "write_figures", "write_report", "write_tables"]
