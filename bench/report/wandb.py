"""A W&B group's runs read through `wandb.Api()` into `bench.report.frames.Results`, so that the
same tables and figures are rebuilt from W&B alone (the summary run: `bench.report.wandb_summary`).

A run's config is logged in nested sections: `run` with the identifying columns, then the run
config's sections.
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any, Optional

import numpy as np
import pandas as pd

from bench.ablation.tracking import RUN_SECTION
from bench.config import RunConfig
from bench.errors import BenchError, ConfigError, first_line
from bench.report import write_report
from bench.report.frames import CURVE_COLUMNS, GAP_COLUMNS, Results, concat, runs_frame
from bench.runs import RunDir
from bench.runs.rundir import flat_config


def _plain(value: Any) -> Any:
    """A W&B summary value (HTTPSummary sub-dicts included) as plain dicts and lists."""
    if hasattr(value, "items"):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _history(run) -> pd.DataFrame:
    """The per-epoch rows of a run's history (those with `epoch`), W&B's own `_` keys dropped."""
    rows = [dict(sorted((k, v) for k, v in row.items() if not k.startswith("_"))) for row in run.scan_history()
            if row.get("epoch") is not None]
    return pd.DataFrame(rows)


def _per_image(run, name: str) -> Optional[np.ndarray]:
    """The run's uploaded per-image file (RunDir.LOGIT_GAPS, RunDir.CORRECT), or None."""
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run.file(name).download(root=tmp, replace=True)
            return np.load(Path(tmp) / name, allow_pickle=False)
    except Exception:   # not uploaded (an older run): the report goes without Fig. 4b or the test-set noise
        return None


def config_columns(config: dict[str, Any]) -> tuple[Optional[str], dict[str, Any]]:
    """(the run's path, its `config.*` columns) from a W&B config: the sections are flattened as
    runs.csv flattens config.yaml; keys that are not a section (a sweep's own parameters, W&B's)
    are left out."""
    ids = config.get(RUN_SECTION)
    path = ids.get("path") if isinstance(ids, dict) else None
    return path, flat_config({k: v for k, v in config.items() if k in RunConfig.model_fields})


def load_wandb_results(path: str, group: str, api=None) -> Results:
    """The finished runs of W&B group `group` in `path` ("ENTITY/PROJECT"), as the frames that
    `bench.report.frames.load_results` builds from run directories.

    A run counts when its summary holds `final` (what final.json holds); its DataFrame row is
    that record, its `path` and its `config.*` columns (`config_columns`). Of runs with the same
    path, the latest wins.
    """
    if path.count("/") != 1 or not all(path.split("/")):
        raise ConfigError(f"--from-wandb {path!r}: expected ENTITY/PROJECT")
    try:
        if api is None:
            import wandb

            api = wandb.Api()
        found = list(api.runs(path, filters={"group": group}))
    except Exception as err:
        raise BenchError(f"--from-wandb {path}: {type(err).__name__}: {first_line(err)}") from None
    rows: dict[str, dict] = {}
    curves: dict[str, pd.DataFrame] = {}
    gaps: dict[str, np.ndarray] = {}
    correct: dict[str, np.ndarray] = {}
    for run in found:
        final = _plain(run.summary.get("final"))
        run_path, columns = config_columns(_plain(dict(run.config)))
        if not final or run_path is None:   # the summary run, or a run that did not finish
            continue
        rows[run_path] = {**final, "path": run_path, **columns}
        curves[run_path] = _history(run).assign(path=run_path)
        gap, right = _per_image(run, RunDir.LOGIT_GAPS), _per_image(run, RunDir.CORRECT)
        if gap is not None:
            gaps[run_path] = gap.astype(float)
        if right is not None and right.dtype == bool:
            correct[run_path] = right
    if not rows:
        raise BenchError(f"--from-wandb {path} --group {group}: no finished runs in this group")
    df = runs_frame([rows[p] for p in sorted(rows, key=lambda p: Path(p).parts)])
    return Results(df, concat([curves[p] for p in df["path"] if not curves[p].empty], CURVE_COLUMNS),
                   concat([pd.DataFrame({"path": p, "logit_gap": gaps[p]}) for p in df["path"] if p in gaps], GAP_COLUMNS),
                   {p: correct[p] for p in df["path"] if p in correct})


def write_wandb_report(path: str, group: str, out_dir: Path, api=None, figures: bool = True) -> str:
    """The tables (and figures/) of W&B group `group` written to `out_dir`; returns the Markdown."""
    return write_report(Path(out_dir), figures, results=load_wandb_results(path, group, api))
