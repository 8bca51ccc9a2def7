"""What an ablation will do before it costs anything: every planned run with the step it builds
on, what it changes, its effective settings, the images it trains on and its device-hours."""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from bench.ablation.plan import RunSpec
from bench.config import ModelConfig, RunConfig
from bench.engine.data.sizes import dataset_images, images_per_epoch
from bench.errors import BenchError


@dataclass(frozen=True)
class Throughput:
    """Training images/s of one device, measured by `bench` for one model (name and kwargs), crop
    and precision (and distillation from one teacher), or given for every run."""

    images_per_s: float
    distill_images_per_s: Optional[float] = None
    model: Optional[str] = None          # None: any run
    model_kwargs: Optional[dict] = None
    teacher: Optional[str] = None
    teacher_kwargs: Optional[dict] = None
    image_size: Optional[int] = None
    precision: Optional[str] = None

    def rate_for(self, cfg: RunConfig, teacher: Optional[ModelConfig]) -> Optional[float]:
        """The rate that applies to a run of `cfg`, or None when this measurement is of another run."""
        if self.model is None:
            return self.images_per_s
        measured = (self.model, self.model_kwargs or {}, self.image_size, self.precision)
        if (cfg.model.name, cfg.model.kwargs, cfg.data.size(), cfg.efficient.precision) != measured:
            return None
        if cfg.distill is None:
            return self.images_per_s
        same = teacher is not None and (teacher.name, teacher.kwargs) == (self.teacher, self.teacher_kwargs or {})
        return self.distill_images_per_s if same else None


def read_bench_json(path: str | Path) -> Throughput:
    """The training rates in a `run_ablation.py bench` JSON: its "plain" and "distill" variants."""
    try:
        record = json.loads(Path(path).read_text())
        settings, variants = record["settings"], record["variants"]
        return Throughput(images_per_s=float(variants["plain"]["images_per_s"]),
                          distill_images_per_s=float(variants["distill"]["images_per_s"]) if "distill" in variants else None,
                          model=settings["model"], model_kwargs=settings.get("model_kwargs") or {}, teacher=settings.get("teacher"),
                          teacher_kwargs=settings.get("teacher_kwargs") or {}, image_size=int(settings["image_size"]),
                          precision=settings["precision"])
    except FileNotFoundError:
        raise BenchError(f"--bench {path}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BenchError(f"--bench {path}: not a JSON written by 'run_ablation.py bench' ({type(err).__name__}: {err})") from None


def _settings(cfg: RunConfig, teacher_model: Optional[str]) -> dict[str, Any]:
    s, ls, mix, kd = cfg.schedule, cfg.label_smoothing, cfg.mixing(), cfg.distill
    return {
        "model": cfg.model.name, "image_px": cfg.data.size(), "global_batch": cfg.data.global_batch_size,
        "bn_batch": cfg.efficient.bn_batch_size or "per device", "peak_lr": round(cfg.peak_lr(), 6),
        "warmup_epochs": s.warmup_epochs, "epochs": s.epochs,
        "schedule": "cosine" if s.kind == "cosine" else "step " + "/".join(map(str, s.milestones)),
        "precision": cfg.efficient.precision,
        "smoothing": f"{ls.form} ε={ls.eps:g}" if ls else "–",
        "mixing": f"{type(mix).__name__.removesuffix('Config').lower()} α={mix.alpha:g}" if mix else "–",
        "teacher": (f"{kd.teacher}{f' ({teacher_model})' if teacher_model not in (None, kd.teacher) else ''} T={kd.temperature:g}"
                    + (f" w={kd.hard_weight:g}" if kd.hard_weight is not None else "")) if kd else "–",
    }


def plan_table(specs: Sequence[RunSpec], rates: Sequence[Throughput] = ()) -> pd.DataFrame:
    """One row per planned run, in launch order: what it is, what it changes against the run it
    builds on, its settings, the images it trains on and, with a throughput, its device-hours."""
    by_key = {(s.model, s.step, s.seed): s for s in specs if s.role == "student"}
    teacher_models = {s.step: s.config.model for s in specs if s.role == "teacher"}
    first = next((s for s in specs if s.role == "student" and s.step_index == 1), None)
    sizes: dict[str, Optional[int]] = {}
    rows = []
    for i, spec in enumerate(specs, start=1):
        cfg = spec.config
        if spec.role == "teacher":
            base = by_key.get((first.model, first.step, spec.seed)) if first else None
        elif spec.parent_step:
            base = by_key.get((spec.model, spec.parent_step, spec.seed))
        else:
            base = by_key.get((first.model, first.step, spec.seed)) if first and spec.model != first.model else None
        teacher = None
        if cfg.distill is not None:
            given = spec.teacher_config.model if spec.teacher_config is not None else None
            teacher = teacher_models.get(cfg.distill.teacher, given)
        key = json.dumps(cfg.data.model_dump(mode="json", include={"dataset", "root", "val_fraction", "holdout"}), sort_keys=True)
        if key not in sizes:
            sizes[key] = dataset_images(cfg.data)
        per_epoch = images_per_epoch(cfg.data, sizes[key])
        images = per_epoch * cfg.schedule.epochs if per_epoch is not None else None
        rate = next((r for r in (t.rate_for(cfg, teacher) for t in rates) if r is not None), None)
        rows.append({"order": i, "run": spec.label, "role": spec.role, "builds_on": spec.parent_step or "–",
                     "changes": "(base)" if base is None else "; ".join(cfg.differences(base.config)) or "(none)",
                     **_settings(cfg, teacher.name if teacher else None), "train_images": images,
                     "images_per_s": round(rate, 1) if rate else None,
                     "device_hours": images / rate / 3600 if images is not None and rate else None})
    return pd.DataFrame(rows)


def plan_totals(table: pd.DataFrame) -> dict[str, Any]:
    """Runs, training images and device-hours summed; runs without an estimate counted."""
    return {"runs": len(table), "train_images": int(table["train_images"].fillna(0).sum()),
            "device_hours": float(table["device_hours"].fillna(0).sum()),
            "runs_without_estimate": int(table["device_hours"].isna().sum())}


MARKDOWN_COLUMNS = {"order": "#", "run": "run", "builds_on": "builds on", "changes": "changes", "model": "model",
                    "image_px": "px", "global_batch": "batch", "bn_batch": "BN batch", "peak_lr": "peak lr",
                    "warmup_epochs": "warmup", "epochs": "epochs", "schedule": "schedule", "precision": "precision",
                    "smoothing": "smoothing", "mixing": "mixing", "teacher": "teacher", "train_images": "train images",
                    "images_per_s": "images/s", "device_hours": "device-h"}


def _cell(v: Any) -> str:
    if v is None or (isinstance(v, float) and pd.isna(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:,.1f}" if v >= 10 else f"{v:.2f}"
    return f"{v:,}" if isinstance(v, int) else str(v).replace("|", "\\|")


def format_plan(table: pd.DataFrame, fmt: str = "md") -> str:
    """The plan as Markdown (a table, then the totals) or CSV (a last row "total")."""
    totals = plan_totals(table)
    if fmt == "csv":
        total = {"run": "total", "train_images": totals["train_images"], "device_hours": totals["device_hours"]}
        return pd.concat([table.astype(object), pd.DataFrame([total], dtype=object)], ignore_index=True).to_csv(index=False)
    cols = list(MARKDOWN_COLUMNS)
    lines = ["| " + " | ".join(MARKDOWN_COLUMNS.values()) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in cols) + " |" for row in table.to_dict("records")]
    hours = f"{totals['device_hours']:,.1f} device-hours"
    if totals["runs_without_estimate"]:
        hours += (f" for the runs with a throughput; {totals['runs_without_estimate']} of {totals['runs']} have none "
                  "(give --images-per-s, or --bench JSON measured for their model, crop and precision)")
    lines += ["", f"Total: {totals['runs']} runs, {totals['train_images']:,} training images, {hours}."]
    return "\n".join(lines) + "\n"
