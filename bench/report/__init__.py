"""The report: run directories (or W&B) → DataFrames → statistics → tables and figures."""
from pathlib import Path

from bench.report.figures import make_figures, write_figures
from bench.report.frames import Results, load_results, load_runs
from bench.report.stats import ablation_table, paired_deltas, step_stats
from bench.report.tables import table_markdown, write_tables


def write_report(results_dir: Path, figures: bool = True) -> str:
    """Rebuild the tables (and figures/) of `results_dir` from its run directories alone, without
    retraining; returns the Markdown table."""
    results = load_results(results_dir)
    markdown = write_tables(results, results_dir)
    if figures:
        write_figures(results, Path(results_dir) / "figures")
    return markdown


__all__ = ["Results", "ablation_table", "load_results", "load_runs", "make_figures", "paired_deltas", "step_stats",
           "table_markdown", "write_figures", "write_report", "write_tables"]
