"""An ablation's report in W&B: one summary run per group holding the runs, the ablation table
(Table 6 as in table.md), the paired deltas with their intervals and the figures. Its id is
derived from the group, so reporting again updates the same run instead of adding another."""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from bench.ablation.tracking import ablation_group
from bench.ablation.wandb_connect import error_line, init_run, resolve_mode, sweep_run_id, used_dir, wandb_dir, warn
from bench.config import WandbConfig
from bench.engine import distributed as dist
from bench.report.effects import trick_effects
from bench.report.frames import load_results
from bench.report.stats import ablation_table, staircase_deltas
from bench.report.tables import format_table

SUMMARY_JOB = "summary"


def summary_run_id(group: str) -> str:
    """The summary run's W&B id: the same for the same group, in any results directory."""
    return f"{SUMMARY_JOB}-{hashlib.sha256(group.encode()).hexdigest()[:16]}"


def _cell(value: Any) -> Any:
    """A value a W&B table cell takes: lists and mappings as text."""
    return value if value is None or isinstance(value, (str, int, float, bool, np.generic)) else str(value)


def _number(value: Any) -> Any:
    """A summary value: NaN (no interval with one seed) as None."""
    value = value.item() if isinstance(value, np.generic) else value
    return None if isinstance(value, float) and math.isnan(value) else value


def delta_summary(deltas: pd.DataFrame) -> dict[str, dict[str, dict[str, Any]]]:
    """{model: {step: {delta_top1, ci_low, ci_high, n_pairs, p, p_holm, detected}}} of `staircase_deltas`."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for row in deltas.to_dict("records"):
        out.setdefault(str(row["model"]), {})[str(row["step"])] = {
            k: _number(row[k]) for k in ("parent_step", "delta_top1", "ci_low", "ci_high", "n_pairs", "p", "p_holm", "detected")
            if k in row}
    return out


def summary_data(out: Path) -> dict[str, Any]:
    """What the summary run logs: `runs`, `table`, `deltas` and `effects` as W&B tables, `delta` as nested
    numbers, `figures/<name>` as images."""
    import wandb

    found = load_results(out)
    data: dict[str, Any] = {"runs": wandb.Table(dataframe=found.runs.map(_cell))}
    shown = format_table(ablation_table(found.runs, correct=found.correct))
    if not shown.empty:
        shown.columns = [f"{m} {c}" for m, c in shown.columns]
        data["table"] = wandb.Table(dataframe=shown.reset_index())
    deltas = staircase_deltas(found.runs, found.correct)
    if not deltas.empty:
        data["deltas"] = wandb.Table(dataframe=deltas.map(_cell))
        data["delta"] = delta_summary(deltas)
    effects = trick_effects(found.runs, found.correct)
    if not effects.empty:
        data["effects"] = wandb.Table(dataframe=effects.map(_cell))
    for png in sorted((out / "figures").glob("*.png")):
        data[f"figures/{png.stem}"] = wandb.Image(str(png))
    return data


def log_report(settings: Optional[WandbConfig], out: Path) -> None:
    """Log `out`'s report to its group's summary run (the same run each time), and say how to
    upload offline runs. Never raises. Not in a sweep: there the sweep's run is the record."""
    if settings is None or dist.read_env().rank != 0:
        return
    out = Path(out)
    if sweep_run_id() is not None:
        print("wandb: in a sweep, no summary run: each sweep run holds its own top1")
        return
    group = ablation_group(settings, out)
    where = wandb_dir(out) / "wandb"
    try:
        run = init_run(settings, out, summary_run_id(group), group, job_type=SUMMARY_JOB, name=SUMMARY_JOB,
                       tags=[SUMMARY_JOB])
        if run is not None:
            where = used_dir(run)
            run.log(summary_data(out))
            run.finish()
    except Exception as err:  # the report is on disk already; W&B is a mirror
        warn(f"logging the report failed ({error_line(err)})")
    if resolve_mode(settings) == "offline":
        print(f"wandb: offline runs are in {where}; upload them later with: wandb sync {where}/offline-run-*")
