"""What an ablation will do before it costs anything: every planned run with the step it builds
on, what it changes, its effective settings, the images it trains on and its device-hours."""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from bench.ablation.plan import RunSpec
from bench.config import ModelConfig, RunConfig
from bench.config.datasets import DATASETS
from bench.engine.data.sizes import dataset_images, images_per_epoch
from bench.engine.models import family, measure_model
from bench.errors import BenchError

TABLE3 = "the paper's Table 3 (V100)"


@dataclass(frozen=True)
class Rate:
    """Training images/s per device of one model at one crop and precision, and where it comes
    from: a `bench` JSON (with its distillation rate from one teacher) or the paper's Table 3."""

    source: str
    model: str
    image_size: int
    precision: str
    images_per_s: float
    model_kwargs: dict = field(default_factory=dict)
    classes: int = 1000
    teacher: Optional[str] = None
    teacher_kwargs: dict = field(default_factory=dict)
    distill_images_per_s: Optional[float] = None

    def measured(self, model: ModelConfig, size: int, precision: str) -> bool:
        return (model.name, model.kwargs, size, precision) == (self.model, self.model_kwargs, self.image_size, self.precision)


RESNET50D_SLOWER = 0.03   # Section 4: ResNet-50-D's training throughput is 3 % below ResNet-50's (FLOPs would say 12 %)


def table3_rates(table3: pd.DataFrame) -> list[Rate]:
    """Per-device rates from the paper's Table 3 (`results/paper/table3.csv`: minutes per epoch on
    8 V100s, FP16 at batch 1024 and FP32 at 256): an ImageNet epoch's images / (minutes × 60 × 8).
    Inception-V3 ran at 299 px, the others at 224. ResNet-50-D's: ResNet-50's, 3 % slower, as the
    paper measured it (not scaled by FLOPs)."""
    rates = [Rate(TABLE3, row.model, 299 if row.model == "inception_v3" else 224, row.precision,
                  DATASETS["imagenet"].train_images / (row.time_per_epoch_min * 60 * 8)) for row in table3.itertuples()]
    return rates + [Rate(f"{TABLE3}, ResNet-50's × {1 - RESNET50D_SLOWER:g} (Section 4: 3 % slower)", "resnet50d",
                         r.image_size, r.precision, r.images_per_s * (1 - RESNET50D_SLOWER))
                    for r in rates if r.model == "resnet50_v1"]


def read_bench_json(path: str | Path) -> Rate:
    """The training rates in a `run_ablation.py bench` JSON: its "plain" and "distill" variants."""
    try:
        record = json.loads(Path(path).read_text())
        settings, variants = record["settings"], record["variants"]
        return Rate(source=str(path), model=settings["model"], image_size=int(settings["image_size"]),
                    precision=settings["precision"], images_per_s=float(variants["plain"]["images_per_s"]),
                    model_kwargs=settings.get("model_kwargs") or {}, classes=int(settings.get("num_classes", 1000)),
                    teacher=settings.get("teacher"),
                    teacher_kwargs=settings.get("teacher_kwargs") or {},
                    distill_images_per_s=float(variants["distill"]["images_per_s"]) if "distill" in variants else None)
    except FileNotFoundError:
        raise BenchError(f"--bench {path}: no such file") from None
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise BenchError(f"--bench {path}: not a JSON written by 'run_ablation.py bench' ({type(err).__name__}: {err})") from None


class CostModel:
    """Seconds per training image of a run, from the rates given. A rate measured for the run's own
    model, crop and precision applies as it is; otherwise the rate of a model of the same family
    (timm module) and precision, scaled by the two models' forward FLOPs at their crops. A
    distillation run adds its teacher's forward pass on the student's images: a third of the
    teacher's training time per image (backward ≈ 2 forwards), unless a `bench` JSON measured
    that very pair. Validation passes are not counted (at ImageNet's 50,000 against 1.28 M
    training images, about 1 % of a forward-and-backward epoch)."""

    def __init__(self, rates: Sequence[Rate]):
        self.rates = list(rates)
        self._gflops: dict[str, float] = {}

    def gflops(self, model: ModelConfig, size: int, classes: int = 1000, channels: int = 3) -> float:
        key = json.dumps([model.name, model.kwargs, model.small_input, size, classes, channels], sort_keys=True)
        if key not in self._gflops:
            self._gflops[key] = measure_model(model, size, classes, channels)["gflops"]
        return self._gflops[key]

    def train_seconds(self, model: ModelConfig, size: int, precision: str, dataset: str) -> Optional[tuple[float, str]]:
        """Seconds of one training image (forward and backward) on one device, and whence; the
        rates' FLOPs are counted for their classes and 3 channels, the run's for its data set's."""
        kin = family(model.name)
        candidates = [r for r in self.rates if r.precision == precision and kin is not None and family(r.model) == kin]
        exact = [r for r in candidates if r.measured(model, size, precision)]
        if exact:
            return 1 / exact[0].images_per_s, exact[0].source
        if not candidates:
            return None
        data = DATASETS[dataset]
        flops = self.gflops(model, size, data.classes or 1000, data.channels)
        ratios = [flops / self.gflops(ModelConfig(name=r.model, kwargs=r.model_kwargs), r.image_size, r.classes)
                  for r in candidates]
        best = min(range(len(candidates)), key=lambda i: abs(math.log(ratios[i])))
        ref = candidates[best]
        return ratios[best] / ref.images_per_s, f"{ref.source}, {ref.model} at {ref.image_size} px, scaled by FLOPs"

    def images_per_s(self, cfg: RunConfig, teacher: Optional[ModelConfig]) -> Optional[tuple[float, str]]:
        """The run's training images/s per device and where it comes from; None without a rate."""
        size, precision = cfg.data.size(), cfg.efficient.precision
        if cfg.distill is not None:
            if teacher is None:
                return None
            for r in self.rates:
                if r.distill_images_per_s and r.measured(cfg.model, size, precision) \
                        and (teacher.name, teacher.kwargs) == (r.teacher, r.teacher_kwargs):
                    return r.distill_images_per_s, r.source
        student = self.train_seconds(cfg.model, size, precision, cfg.data.dataset)
        if student is None:
            return None
        seconds, source = student
        if cfg.distill is not None:
            forward = self.train_seconds(teacher, size, precision, cfg.data.dataset)
            if forward is None:
                return None
            seconds += forward[0] / 3
            source += f"; + a third of the teacher's training time per image ({forward[1]})"
        return 1 / seconds, source


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


def plan_table(specs: Sequence[RunSpec], rates: Sequence[Rate] = ()) -> pd.DataFrame:
    """One row per planned run, in launch order: what it is, what it changes against the run it
    builds on, its settings, the images it trains on and, with a throughput, its device-hours."""
    by_key = {(s.model, s.step, s.seed): s for s in specs if s.role != "teacher"}
    teacher_models = {s.step: s.config.model for s in specs if s.role == "teacher"}
    first = next((s for s in specs if s.role == "student" and s.step_index == 1), None)
    sizes: dict[str, Optional[int]] = {}
    costs, rows = CostModel(rates), []
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
        rate, source = costs.images_per_s(cfg, teacher) or (None, None)
        rows.append({"order": i, "run": spec.label, "role": spec.role, "builds_on": spec.parent_step or "–",
                     "changes": "(base)" if base is None else "; ".join(cfg.differences(base.config)) or "(none)",
                     **_settings(cfg, teacher.name if teacher else None), "train_images": images,
                     "images_per_s": round(rate, 1) if rate else None, "rate_from": source,
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
                    "images_per_s": "images/s", "rate_from": "rate", "device_hours": "device-h"}


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
    sources = list(dict.fromkeys(table["rate_from"].dropna()))
    shown = table.assign(rate_from=[f"[{sources.index(v) + 1}]" if isinstance(v, str) else None for v in table["rate_from"]])
    cols = list(MARKDOWN_COLUMNS)
    lines = ["| " + " | ".join(MARKDOWN_COLUMNS.values()) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(_cell(row[c]) for c in cols) + " |" for row in shown.to_dict("records")]
    hours = f"{totals['device_hours']:,.1f} device-hours"
    if totals["runs_without_estimate"]:
        hours += (f" for the runs with a rate; {totals['runs_without_estimate']} of {totals['runs']} have none "
                  "(give --paper-times for fp16 or fp32 runs of the paper's model families, or --bench JSON "
                  "measured for a model of their family and their precision)")
    lines += ["", f"Total: {totals['runs']} runs, {totals['train_images']:,} training images, {hours}."]
    if sources:
        lines += ["", "Rates (training images/s per device) from:"] + [f"[{i}] {v}" for i, v in enumerate(sources, 1)]
    return "\n".join(lines) + "\n"
