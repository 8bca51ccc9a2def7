"""Run directories → pandas DataFrames → tables."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from bench import runs

RUN_COLUMNS = ["model", "role", "step", "step_index", "parent_step", "seed", "top1", "top5", "epochs",
               "train_time_s", "images_per_s", "config_hash", "teacher", "path"]


def load_runs(results_dir: Path) -> pd.DataFrame:
    """One row per finished run (its final.json), teachers included; unfinished runs are absent."""
    results_dir = Path(results_dir)
    rows = []
    for final in sorted(results_dir.glob(f"**/{runs.FINAL}")):
        row = json.loads(final.read_text())
        row["path"] = str(final.parent.relative_to(results_dir))
        rows.append(row)
    df = pd.DataFrame(rows, columns=None if rows else RUN_COLUMNS)
    for column in RUN_COLUMNS:
        if column not in df:
            df[column] = None
    order = RUN_COLUMNS + [c for c in df.columns if c not in RUN_COLUMNS]
    return df[order].sort_values(["role", "model", "step_index", "seed"], ascending=[False, True, True, True],
                                 ignore_index=True)


def ablation_table(df: pd.DataFrame) -> pd.DataFrame:
    """Steps in recipe order × models: mean top-1/top-5 over seeds, their std and n, and the
    change in top-1 against the step each one builds on (its parent)."""
    students = df[df["role"] == "student"]
    if students.empty:
        return pd.DataFrame()
    stats = (students.groupby(["model", "step_index", "step"], sort=True)
             .agg(top1=("top1", "mean"), top1_std=("top1", "std"), top5=("top5", "mean"),
                  top5_std=("top5", "std"), n=("seed", "nunique"), parent_step=("parent_step", "first"))
             .reset_index())
    means = stats.set_index(["model", "step"])["top1"]
    stats["delta_top1"] = [means.get((m, p), np.nan) if isinstance(p, str) else np.nan
                           for m, p in zip(stats["model"], stats["parent_step"])]
    stats["delta_top1"] = stats["top1"] - stats["delta_top1"]
    wide = stats.pivot(index=["step_index", "step"], columns="model",
                       values=["top1", "top1_std", "top5", "top5_std", "delta_top1", "n"])
    wide = wide.swaplevel(axis=1).sort_index(axis=1, level=0, sort_remaining=False)
    return wide.reset_index(level="step_index", drop=True)


def _cell(mean: float, std: float, n: int, digits: int = 2) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if n > 1 and not pd.isna(std) else f"{mean:.{digits}f}"


def table_markdown(table: pd.DataFrame) -> str:
    """The ablation table as Markdown: one column group per model (top-1, top-5, Δ top-1)."""
    if table.empty:
        return "_no finished runs_\n"
    models = list(dict.fromkeys(table.columns.get_level_values(0)))
    header = ["step"]
    for model in models:
        header += [f"{model} top-1 (%)", f"{model} top-5 (%)", f"{model} Δ top-1"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for step, row in table.iterrows():
        cells = [step]
        for model in models:
            n = int(row[(model, "n")]) if not pd.isna(row[(model, "n")]) else 0
            delta = row[(model, "delta_top1")]
            cells += [_cell(row[(model, "top1")], row[(model, "top1_std")], n),
                      _cell(row[(model, "top5")], row[(model, "top5_std")], n),
                      "" if pd.isna(delta) else f"{delta:+.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    seeds = int(table.xs("n", axis=1, level=1).max().max())
    note = f"\nTop-1/top-5 on the validation split, mean ± std over {seeds} seeds; " if seeds > 1 else \
        "\nTop-1/top-5 on the validation split, one seed; "
    return "\n".join(lines) + note + "Δ top-1 is against the step each row builds on.\n"


def write_report(results_dir: Path) -> str:
    """Write runs.csv, table.csv and table.md in `results_dir`; returns the Markdown table."""
    results_dir = Path(results_dir)
    df = load_runs(results_dir)
    runs.write_text(results_dir / "runs.csv", df.to_csv(index=False))
    table = ablation_table(df)
    runs.write_text(results_dir / "table.csv", table.to_csv())
    markdown = table_markdown(table)
    runs.write_text(results_dir / "table.md", markdown)
    return markdown
