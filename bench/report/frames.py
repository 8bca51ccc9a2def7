"""Run directories → pandas DataFrames.

`load_results` reads run directories into `Results` (runs, per-epoch curves, validation logit
gaps); everything after it (`bench.report.stats`, `.tables`, `.figures`) reads only those
DataFrames, so frames built from another source (W&B) give the same tables and figures.
"""
from __future__ import annotations

import ast
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.runs import RunDir, files
from bench.runs.environment import machine_name
from bench.runs.files import Unreadable
from bench.runs.rundir import CONFIG_PREFIX, flat_config

PAPER_DIR = Path(__file__).resolve().parent.parent.parent / "results" / "paper"
PAPER_DATASET = "imagenet"   # every published table of the paper is on ImageNet
RUNS_CSV = "runs.csv"
CURVE_COLUMNS, GAP_COLUMNS = ["path", "epoch", "val_top1"], ["path", "logit_gap"]   # of an empty frame of each


def concat(frames: list[pd.DataFrame], columns: list[str]) -> pd.DataFrame:
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
RUN_COLUMNS = ["model", "role", "step", "step_index", "parent_step", "seed", "top1", "top5", "val_images", "epochs",
               "train_time_s", "images_per_s", "config_hash", "teacher", "teacher_hash", "paper_table", "paper_model",
               "num_classes", "steps_per_epoch", "path"]


@dataclass(frozen=True)
class Results:
    """What a report is made of.

    runs: one row per finished run (RUN_COLUMNS, then the flattened config).
    curves: one row per run and epoch: `path` and the metrics.jsonl keys (epoch, val_top1, lr, ...).
    gaps: one row per run and validation image: `path`, `logit_gap` (max logit − mean of the others).
    correct: per run `path` that kept one, whether top-1 got each validation image right (bool array).
    from_runs_csv: read from a runs.csv (no run directories): the report leaves that file as it is.
    skipped: one line per file that could not be read (a damaged run directory) and what was left out.
    """

    runs: pd.DataFrame
    curves: pd.DataFrame
    gaps: pd.DataFrame
    correct: dict = field(default_factory=dict)
    from_runs_csv: bool = False
    skipped: tuple[str, ...] = ()


def load_runs(results_dir: Path, skipped: Optional[dict[str, str]] = None) -> pd.DataFrame:
    """One row per finished run (its final.json), teachers included; unfinished runs are absent.
    A run whose final.json or config.yaml cannot be read is left out: `skipped` gets its path
    and what could not be read."""
    results_dir = Path(results_dir)
    rows = []
    for final in files.find(results_dir, RunDir.FINAL):
        path = str(final.parent.relative_to(results_dir))
        try:
            row, config = RunDir(final.parent).read_finished()
        except Unreadable as err:
            if skipped is not None:
                skipped[path] = str(err)
            continue
        rows.append({"machine": row.get("machine") or machine(final.parent), **row, "path": path, **flat_config(config)})
    return runs_frame(rows)


def machine(run_dir: Path) -> Optional[str]:
    """What a run recorded before final.json kept it: `machine_name` of its env.json."""
    try:
        return machine_name(files.read_json(Path(run_dir) / RunDir.ENV))
    except Unreadable:
        return None


def _skip(skipped: Optional[list[str]], line: str) -> None:
    if skipped is not None:
        skipped.append(line)


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


def read_runs_csv(path: Path) -> pd.DataFrame:
    """A runs.csv read back as the runs DataFrame: config lists (milestones, crop_scale), which
    the CSV holds as their text, are lists again; writing it again gives the same bytes."""
    df = pd.read_csv(path)
    for column in ("top1", "top5", "seed", "step_index"):
        values = pd.to_numeric(df[column], errors="coerce") if column in df else None
        if values is not None and values.isna().ne(df[column].isna()).any():
            bad = df.loc[values.isna() & df[column].notna(), column].iloc[0]
            raise BenchError(f"{path}: column {column} holds {str(bad)[:40]!r}, not a number; remove the file "
                             "to rebuild it from the run directories")
    rows = df.to_dict("records")
    for row in rows:
        for key, value in row.items():
            if str(key).startswith(CONFIG_PREFIX) and isinstance(value, str) and value.startswith("["):
                row[key] = ast.literal_eval(value)
    return runs_frame(rows)


def load_curves(results_dir: Path, run_paths, skipped: Optional[list[str]] = None, epochs=None) -> pd.DataFrame:
    """The metrics.jsonl rows of the given runs, with their `path`. A damaged log, or one that
    lacks a row of the run's `epochs` (one number per run, when given), gives none: said in `skipped`."""
    frames = []
    for i, p in enumerate(run_paths):
        rd = RunDir(Path(results_dir) / p)
        try:
            rows = rd.read_metrics()
            want = epochs[i] if epochs is not None else None
            if type(want) is int and not set(range(want)) <= {r["epoch"] for r in rows}:
                raise Unreadable(rd / RunDir.METRICS, f"rows of {len(rows)} of the run's {want} epochs: cut short")
        except Unreadable as err:
            _skip(skipped, f"skipped {err}; the run's curves are left out")
            continue
        frames.append(pd.DataFrame(rows).assign(path=p))
    frames = [f for f in frames if not f.empty]
    return concat(frames, CURVE_COLUMNS)


PER_IMAGE = {RunDir.LOGIT_GAPS: "logit gaps", RunDir.CORRECT: "per-image results"}   # what the skipped line says


def load_per_image(results_dir: Path, run_paths, name: str, skipped: Optional[list[str]] = None) -> dict[str, np.ndarray]:
    """Per run that kept the per-image file `name` (RunDir.LOGIT_GAPS: float, RunDir.CORRECT:
    bool), its 1-D array; a damaged file is said in `skipped` and left out, and runs recorded
    before the file are absent."""
    out = {}
    for p in run_paths:
        file = Path(results_dir) / p / name
        if not file.is_file():
            continue
        try:
            values = np.load(file, allow_pickle=False)
            if values.ndim != 1 or (name == RunDir.CORRECT) != (values.dtype == bool):
                raise ValueError(f"a {values.dtype} array of shape {values.shape}, not one value per image")
        except (ValueError, OSError, EOFError) as err:   # truncated, garbage or empty
            _skip(skipped, f"skipped {file}: unreadable ({type(err).__name__}: {str(err)[:120]}); "
                           f"the run's {PER_IMAGE[name]} are left out")
            continue
        out[str(p)] = values
    return out


def load_results(results_dir: Path) -> Results:
    """Everything a report needs, read from the run directories under `results_dir`.

    A folder with a runs.csv and no run directories (a published result whose run directories
    were not kept, e.g. results/default) is read from its runs.csv: the tables and the figures
    that need only the runs (staircase, Fig. 3a, Fig. 4a) can be rebuilt; curves and gaps are empty,
    and runs.csv itself is not rewritten.
    """
    results_dir = Path(results_dir)
    if not results_dir.is_dir():
        raise BenchError(f"{results_dir}: no such results directory")
    damaged: dict[str, str] = {}
    df = load_runs(results_dir, damaged)
    if df.empty and not damaged and (results_dir / RUNS_CSV).is_file():
        return Results(read_runs_csv(results_dir / RUNS_CSV), concat([], CURVE_COLUMNS), concat([], GAP_COLUMNS), from_runs_csv=True)
    df, skipped = _keep_previous_rows(df, damaged, results_dir / RUNS_CSV)
    curves = load_curves(results_dir, df["path"], skipped, [_int_or_none(e) for e in df["epochs"]])
    gaps = load_per_image(results_dir, df["path"], RunDir.LOGIT_GAPS, skipped)
    gaps = concat([pd.DataFrame({"path": p, "logit_gap": g.astype(float)}) for p, g in gaps.items()], GAP_COLUMNS)
    return Results(df, curves, gaps, load_per_image(results_dir, df["path"], RunDir.CORRECT, skipped), skipped=tuple(skipped))


def _int_or_none(value: Any) -> Optional[int]:
    return int(value) if isinstance(value, (int, float, np.integer, np.floating)) and value == value else None


def _keep_previous_rows(df: pd.DataFrame, damaged: dict[str, str], runs_csv: Path) -> tuple[pd.DataFrame, list[str]]:
    """The runs with a damaged final.json or config.yaml keep their row of the previous runs.csv,
    if it has one (so rewriting runs.csv loses nothing); one line each says which."""
    previous = pd.DataFrame(columns=["path"])
    if damaged and runs_csv.is_file():
        try:
            previous = read_runs_csv(runs_csv)
        except Exception:   # pandas raises several types for a damaged CSV: nothing to keep then
            pass
    kept = previous[previous["path"].astype(str).isin(damaged)]
    lines = [f"skipped {why}; " + ("its row is kept from the previous runs.csv" if path in set(kept["path"].astype(str))
                                   else "the run is left out of the tables") for path, why in damaged.items()]
    if not kept.empty:
        df = runs_frame(df.to_dict("records") + kept.to_dict("records"))
    return df, lines


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
    the paper's model it stands in for (`paper_model`) at the step of the same name, with the
    table's name and the model's label (`paper_table`, `paper_label`: "table6", "ResNet-50-D")."""
    columns = ["model", "step", "paper_top1", "paper_top5", "paper_table", "paper_label"]
    students = df[(df["role"] == "student") & df["paper_table"].notna()]
    out = []
    for (table, paper_model), group in students.groupby(["paper_table", "paper_model"]):
        paper = load_paper(table, paper_dir)
        paper = paper[(paper["model"] == paper_model) & (paper.get("source", "paper") == "paper")]
        if "batch_size" in paper and f"{CONFIG_PREFIX}data.global_batch_size" in group:
            batch = group[f"{CONFIG_PREFIX}data.global_batch_size"].iloc[0]
            paper = paper[paper["batch_size"] == batch]
        for model in group["model"].unique():
            out.append(paper[["step", "top1", "top5", "model_label"]].assign(model=model, paper_table=table))
    if not out:
        return pd.DataFrame(columns=columns)
    return pd.concat(out).rename(columns={"top1": "paper_top1", "top5": "paper_top5", "model_label": "paper_label"})[
        columns].drop_duplicates(["model", "step"])
