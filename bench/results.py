"""Run directories → pandas DataFrames → tables.

Two halves with DataFrames between them: `load_results` reads run directories into `Results`
(runs, per-epoch curves, validation logit gaps); everything after it (`step_stats`,
`ablation_table`, `paired_deltas`, the Markdown/LaTeX writers, `bench.plots`) reads only those
DataFrames, so frames built from another source give the same tables and figures.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from bench import runs
from bench.errors import BenchError

PAPER_DIR = Path(__file__).resolve().parent.parent / "results" / "paper"
RUN_COLUMNS = ["model", "role", "step", "step_index", "parent_step", "seed", "top1", "top5", "epochs",
               "train_time_s", "images_per_s", "config_hash", "teacher", "paper_table", "paper_model",
               "num_classes", "steps_per_epoch", "path"]
CONFIG_PREFIX = "config."   # runs' resolved config.yaml, flattened: config.schedule.kind, ...


@dataclass(frozen=True)
class Results:
    """What a report is made of.

    runs: one row per finished run (RUN_COLUMNS, then the flattened config).
    curves: one row per run and epoch: `path` and the metrics.jsonl keys (epoch, val_top1, lr, ...).
    gaps: one row per run and validation image: `path`, `logit_gap` (max logit − mean of the others).
    """

    runs: pd.DataFrame
    curves: pd.DataFrame
    gaps: pd.DataFrame


def load_runs(results_dir: Path) -> pd.DataFrame:
    """One row per finished run (its final.json), teachers included; unfinished runs are absent."""
    results_dir = Path(results_dir)
    rows = []
    for final in sorted(results_dir.glob(f"**/{runs.FINAL}")):
        row = json.loads(final.read_text())
        row["path"] = str(final.parent.relative_to(results_dir))
        config = runs.read_yaml(final.parent / "config.yaml") or {}
        row.update(pd.json_normalize(config, sep=".").add_prefix(CONFIG_PREFIX).iloc[0].to_dict() if config else {})
        rows.append(row)
    return runs_frame(rows)


def runs_frame(rows: list[dict]) -> pd.DataFrame:
    """Run records (final.json, `path`, `config.*`), in path order, as the runs DataFrame:
    RUN_COLUMNS first, then the others sorted; teachers first, then by model, step and seed."""
    df = pd.DataFrame(rows, columns=None if rows else RUN_COLUMNS)
    for column in RUN_COLUMNS:
        if column not in df:
            df[column] = None
    order = RUN_COLUMNS + sorted(c for c in df.columns if c not in RUN_COLUMNS)
    return df[order].sort_values(["role", "model", "step_index", "seed"], ascending=[False, True, True, True],
                                 ignore_index=True)


def load_curves(results_dir: Path, run_paths) -> pd.DataFrame:
    """The metrics.jsonl rows of the given runs, with their `path`."""
    frames = [pd.DataFrame(runs.read_metrics(Path(results_dir) / p / runs.METRICS)).assign(path=p) for p in run_paths]
    frames = [f for f in frames if not f.empty]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["path", "epoch", "val_top1"])


def load_logit_gaps(results_dir: Path, run_paths) -> pd.DataFrame:
    """The stored validation logit gaps of the given runs (runs without the file are absent)."""
    frames = []
    for p in run_paths:
        file = Path(results_dir) / p / runs.LOGIT_GAPS
        if file.is_file():
            frames.append(pd.DataFrame({"path": p, "logit_gap": np.load(file).astype(float)}))
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["path", "logit_gap"])


def load_results(results_dir: Path) -> Results:
    """Everything a report needs, read from the run directories under `results_dir`."""
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise BenchError(f"{results_dir}: no such results directory")
    df = load_runs(results_dir)
    return Results(df, load_curves(results_dir, df["path"]), load_logit_gaps(results_dir, df["path"]))


def run_config(row: pd.Series) -> dict[str, Any]:
    """A run's config as a nested dict, rebuilt from its flattened `config.*` entries."""
    nested: dict[str, Any] = {}
    for key, value in row.items():
        if not str(key).startswith(CONFIG_PREFIX) or value is None or (isinstance(value, float) and math.isnan(value)):
            continue
        *parents, leaf = str(key)[len(CONFIG_PREFIX):].split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def load_paper(table: str, paper_dir: Path = PAPER_DIR) -> pd.DataFrame:
    """A published table in tidy long form: table, step, step_label, model, model_label, top1, top5,
    and the table's own keys (batch_size, source, gflops, ...)."""
    path = Path(paper_dir) / f"{table}.csv"
    if not path.is_file():
        known = sorted(p.stem for p in Path(paper_dir).glob("*.csv"))
        raise BenchError(f"paper_table '{table}': no {path} (known: {', '.join(known) or 'none'})")
    return pd.read_csv(path)


def paper_values(df: pd.DataFrame, paper_dir: Path = PAPER_DIR) -> pd.DataFrame:
    """For each student (model, step) whose recipe names a paper table: the published top-1/top-5 of
    the paper's model it stands in for (`paper_model`) at the step of the same name."""
    students = df[(df["role"] == "student") & df["paper_table"].notna()]
    out = []
    for (table, paper_model), group in students.groupby(["paper_table", "paper_model"]):
        paper = load_paper(table, paper_dir)
        paper = paper[(paper["model"] == paper_model) & (paper.get("source", "paper") == "paper")]
        if "batch_size" in paper and f"{CONFIG_PREFIX}data.global_batch_size" in group:
            batch = group[f"{CONFIG_PREFIX}data.global_batch_size"].iloc[0]
            paper = paper[paper["batch_size"] == batch]
        for model in group["model"].unique():
            out.append(paper[["step", "top1", "top5"]].assign(model=model))
    if not out:
        return pd.DataFrame(columns=["model", "step", "paper_top1", "paper_top5"])
    return pd.concat(out).rename(columns={"top1": "paper_top1", "top5": "paper_top5"})[
        ["model", "step", "paper_top1", "paper_top5"]].drop_duplicates(["model", "step"])


def t_quantile(p: float, dof: int) -> float:
    """The p-quantile of Student's t with `dof` degrees of freedom."""
    from scipy import stats

    return float(stats.t.ppf(p, dof))


def paired_deltas(df: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Each student step's top-1 change against the step it builds on, paired by seed:
    mean difference, its two-sided `confidence` t-interval (n ≥ 2 pairs) and whether it excludes 0."""
    students = df[df["role"] == "student"]
    rows = []
    for (model, step), group in students.groupby(["model", "step"], sort=False):
        parent = group["parent_step"].iloc[0]
        base = students[(students["model"] == model) & (students["step"] == parent)]
        pairs = group.merge(base, on="seed", suffixes=("", "_parent"))
        d = (pairs["top1"] - pairs["top1_parent"]).to_numpy(float)
        row = {"model": model, "step": step, "parent_step": parent, "n_pairs": len(d),
               "delta_top1": d.mean() if len(d) else np.nan, "ci_low": np.nan, "ci_high": np.nan, "excludes_zero": False}
        if len(d) >= 2:
            half = t_quantile(0.5 + confidence / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
            row.update(ci_low=d.mean() - half, ci_high=d.mean() + half,
                       excludes_zero=bool(d.mean() - half > 0 or d.mean() + half < 0))
        rows.append(row)
    return pd.DataFrame(rows, columns=["model", "step", "parent_step", "n_pairs", "delta_top1", "ci_low",
                                       "ci_high", "excludes_zero"])


def step_stats(df: pd.DataFrame, paper: Optional[pd.DataFrame] = None, confidence: float = 0.95) -> pd.DataFrame:
    """One row per (model, student step) in recipe order: n seeds, mean and std of top-1/top-5,
    Δ top-1 against the parent step's mean, the paired interval, and the paper's values."""
    students = df[df["role"] == "student"]
    columns = ["model", "step_index", "step", "parent_step", "n", "top1", "top1_std", "top5", "top5_std",
               "delta_top1", "ci_low", "ci_high", "excludes_zero", "paper_top1", "paper_top5",
               "vs_paper_top1", "vs_paper_top5"]
    if students.empty:
        return pd.DataFrame(columns=columns)
    stats = (students.groupby(["model", "step_index", "step"], sort=True)
             .agg(parent_step=("parent_step", "first"), n=("seed", "nunique"), top1=("top1", "mean"),
                  top1_std=("top1", "std"), top5=("top5", "mean"), top5_std=("top5", "std"))
             .reset_index())
    means = stats.set_index(["model", "step"])["top1"]
    stats["delta_top1"] = stats["top1"] - [means.get((m, p), np.nan) if isinstance(p, str) else np.nan
                                           for m, p in zip(stats["model"], stats["parent_step"])]
    ci = paired_deltas(students, confidence)[["model", "step", "ci_low", "ci_high", "excludes_zero"]]
    stats = stats.merge(ci, on=["model", "step"], how="left")
    paper = paper_values(df) if paper is None else paper
    stats = stats.merge(paper, on=["model", "step"], how="left")
    stats["vs_paper_top1"] = stats["top1"] - stats["paper_top1"]
    stats["vs_paper_top5"] = stats["top5"] - stats["paper_top5"]
    return stats[columns].sort_values(["model", "step_index"], ignore_index=True)


def ablation_table(df: pd.DataFrame, paper: Optional[pd.DataFrame] = None, confidence: float = 0.95) -> pd.DataFrame:
    """The Table-6 shape: steps in recipe order × (model, statistic), from `step_stats`."""
    stats = step_stats(df, paper, confidence)
    if stats.empty:
        return pd.DataFrame()
    order = stats.drop_duplicates("step").sort_values("step_index")["step"].tolist()
    values = [c for c in stats.columns if c not in ("model", "step_index", "step", "parent_step")]
    wide = stats.pivot(index="step", columns="model", values=values).reindex(order)
    wide = wide.swaplevel(axis=1).sort_index(axis=1, level=0, sort_remaining=False)
    return wide[[(m, v) for m in dict.fromkeys(stats["model"]) for v in values]]


def _mean_std(mean: float, std: float, n: int) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if n > 1 and not pd.isna(std) else f"{mean:.2f}"


def _signed(x: float) -> str:
    return "" if pd.isna(x) else f"{x:+.2f}"


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    """`ablation_table` as display strings: per model n, top-1, Δ top-1 (with its paired interval
    when there are several seeds; * when it excludes 0), top-5 and, with a paper table, the
    published value and our difference to it."""
    models = list(dict.fromkeys(table.columns.get_level_values(0)))
    with_paper = any(table[(m, "paper_top1")].notna().any() for m in models)
    out = {}
    for m in models:
        t = table[m]
        n = t["n"].fillna(0).astype(int)
        out[(m, "n")] = n.astype(str)
        out[(m, "top-1 (%)")] = [_mean_std(a, s, k) for a, s, k in zip(t["top1"], t["top1_std"], n)]
        out[(m, "Δ top-1")] = [_signed(d) + (f" [{_signed(lo)}, {_signed(hi)}]{'*' if ex else ''}" if not pd.isna(lo) else "")
                               for d, lo, hi, ex in zip(t["delta_top1"], t["ci_low"], t["ci_high"], t["excludes_zero"])]
        out[(m, "top-5 (%)")] = [_mean_std(a, s, k) for a, s, k in zip(t["top5"], t["top5_std"], n)]
        if with_paper:
            for k in ("top1", "top5"):
                out[(m, f"paper {k[:3]}-{k[3]}")] = [
                    "–" if pd.isna(p) else f"{p:.2f} ({_signed(d)})" for p, d in zip(t[f"paper_{k}"], t[f"vs_paper_{k}"])]
    return pd.DataFrame(out, index=table.index)


def _note(table: pd.DataFrame, confidence: float) -> str:
    seeds = int(table.xs("n", axis=1, level=1).max().max())
    note = (f"Top-1/top-5 (%) on the validation split, mean ± std over {seeds} seeds; " if seeds > 1
            else "Top-1/top-5 (%) on the validation split, one seed; ")
    note += "Δ top-1 is against the step each row builds on"
    if seeds > 1:
        note += (f", with its {confidence:.0%} t-interval paired by seed (* where it excludes 0: larger than"
                 " seed noise)")
    if any(table[(m, "paper_top1")].notna().any() for m in dict.fromkeys(table.columns.get_level_values(0))):
        note += "; paper: the published value (our value − published)"
    return note + "."


def table_markdown(table: pd.DataFrame, confidence: float = 0.95) -> str:
    """The ablation table as Markdown, one column group per model, and a note on what it shows."""
    if table.empty:
        return "_no finished runs_\n"
    shown = format_table(table)
    models = len(dict.fromkeys(shown.columns.get_level_values(0)))
    header = ["step"] + [f"{m} {c}" if models > 1 else c for m, c in shown.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([str(step), *row]) + " |" for step, row in zip(shown.index, shown.to_numpy())]
    if models == 1:
        lines.insert(0, f"**{shown.columns[0][0]}**\n")
    return "\n".join(lines) + "\n\n" + _note(table, confidence) + "\n"


_LATEX = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "±": r"$\pm$",
          "Δ": r"$\Delta$", "–": "--", "−": "-", "*": r"$^*$"}


def _tex(text: Any) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def table_latex(table: pd.DataFrame, confidence: float = 0.95) -> str:
    """The ablation table as a LaTeX tabular (booktabs), one multicolumn group per model."""
    if table.empty:
        return "% no finished runs\n"
    shown = format_table(table)
    shown = shown.map(_tex)
    shown.columns = pd.MultiIndex.from_tuples([(_tex(m), _tex(c)) for m, c in shown.columns])
    shown.index = [_tex(s) for s in shown.index]
    return shown.to_latex(multicolumn=True, multicolumn_format="c") + f"% {_tex(_note(table, confidence))}\n"


def write_tables(results: Results, out_dir: Path, confidence: float = 0.95) -> str:
    """runs.csv, table.csv, table.md, table.tex and deltas.csv in `out_dir`; returns the Markdown."""
    out_dir = Path(out_dir)
    runs.write_text(out_dir / "runs.csv", results.runs.to_csv(index=False))
    table = ablation_table(results.runs, confidence=confidence)
    flat = table.copy()
    flat.columns = [f"{m}/{v}" for m, v in flat.columns]
    runs.write_text(out_dir / "table.csv", flat.to_csv())
    runs.write_text(out_dir / "deltas.csv", paired_deltas(results.runs, confidence).to_csv(index=False))
    markdown = table_markdown(table, confidence)
    runs.write_text(out_dir / "table.md", markdown)
    runs.write_text(out_dir / "table.tex", table_latex(table, confidence))
    return markdown


def write_report(results_dir: Path, figures: bool = True) -> str:
    """Rebuild the tables (and figures/) of `results_dir` from its run directories alone, without
    retraining; returns the Markdown table."""
    results = load_results(results_dir)
    markdown = write_tables(results, results_dir)
    if figures:
        from bench.plots import write_figures

        write_figures(results, Path(results_dir) / "figures")
    return markdown
