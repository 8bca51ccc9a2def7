"""DataFrames → matplotlib Figures: the ablation staircase and the paper's Figures 3 and 4.

Every function takes the frames of `bench.report.frames.Results` (or what they derive) and returns a
Figure; `write_figures` saves them all as PNG and PDF. Nothing here shows a window.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bench.config import RunConfig, schedule_for
from bench.report.curves import mean_curve, plot_curve, plot_curves
from bench.report.effects import plot_cost
from bench.report.frames import Results, run_config
from bench.report.staircase import plot_staircase
from bench.report.style import COLORS, PAPER_COLOR, STYLE
from bench.report.style import first_model as _first_model
from bench.report.style import students as _students
from bench.runs import atomic_write

METADATA = {"png": None, "pdf": {"CreationDate": None}}   # no date in a PDF: the same data, the same bytes


def _pick(runs: pd.DataFrame, child, parent) -> tuple[Optional[str], Optional[str]]:
    """The first student step (first model) satisfying `child(config)` whose parent step satisfies
    `parent(config)`: the pair of steps that differ by one trick."""
    s = _students(runs)
    s = s[s["model"] == _first_model(runs)]
    configs = {step: run_config(row) for step, row in s.drop_duplicates("step").set_index("step").iterrows()}
    for _, row in s.drop_duplicates("step").sort_values("step_index").iterrows():
        p = row["parent_step"]
        if p in configs and child(configs[row["step"]]) and parent(configs[p]):
            return p, row["step"]
    return None, None


def schedule_steps(runs: pd.DataFrame) -> tuple[Optional[str], Optional[str]]:
    """(step-decay step, cosine step): the first cosine step built on a step-decay one."""
    kind = lambda c: c.get("schedule", {}).get("kind")  # noqa: E731
    return _pick(runs, lambda c: kind(c) == "cosine", lambda c: kind(c) == "step")


def smoothing_steps(runs: pd.DataFrame) -> tuple[Optional[str], Optional[str]]:
    """(one-hot step, label-smoothing step): the first step that switches smoothing on."""
    return _pick(runs, lambda c: "label_smoothing" in c, lambda c: "label_smoothing" not in c)


def plot_lr_schedules(runs: pd.DataFrame) -> Figure:
    """Fig. 3a: learning rate vs epoch for warmup + step and warmup + cosine, computed by the
    runs' own schedule (`schedule_for`: peak lr, warmup, milestones, epochs, iterations per epoch)."""
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(6.5, 4.2), layout="constrained")
        ax = fig.subplots()
        s = _students(runs)
        for i, step in enumerate(schedule_steps(runs)):
            if step is None:
                continue
            row = s[(s["model"] == _first_model(runs)) & (s["step"] == step)].iloc[0]
            cfg = RunConfig.model_validate(run_config(row))
            per_epoch = int(row.get("steps_per_epoch") or 100)
            total = cfg.schedule.epochs * per_epoch
            lr_at = schedule_for(cfg, per_epoch)
            lrs = [lr_at(t) for t in range(total)]
            ax.plot(np.arange(total + 1) / per_epoch, lrs + lrs[-1:], color=COLORS[i], lw=2.2, drawstyle="steps-post",
                    label=f"warmup + {cfg.schedule.kind} ({step})")
        ax.set_xlabel("epoch")
        ax.set_ylabel("learning rate")
        ax.set_ylim(bottom=0)
        ax.set_title("Fig. 3a: learning-rate schedules")
        ax.legend()
    return fig


def plot_schedule_curves(runs: pd.DataFrame, curves: pd.DataFrame) -> Figure:
    """Fig. 3b: validation top-1 vs epoch of the step-decay and the cosine runs (mean ± std over seeds)."""
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(6.5, 4.2), layout="constrained")
        ax = fig.subplots()
        for i, step in enumerate(schedule_steps(runs)):
            if step is not None:
                plot_curve(ax, mean_curve(curves, runs, step, _first_model(runs)), COLORS[i], step)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation top-1 (%)")
        ax.set_title("Fig. 3b: validation accuracy, step vs cosine")
        ax.legend(loc="lower right")
    return fig


def logit_gap_theory(eps, num_classes: int):
    """Fig. 4a: the optimal gap log((K − 1)(1 − ε)/ε) between the true-class logit and the others
    under paper-form smoothing (He et al. 2019, Section 5.2)."""
    eps = np.asarray(eps, dtype=float)
    return np.log((num_classes - 1) * (1 - eps) / eps)


def plot_logit_gap_theory(num_classes: int, eps_marked: Optional[float] = 0.1) -> Figure:
    """Fig. 4a for the recipe's K, with ImageNet's K = 1000 for reference."""
    eps = np.linspace(0.005, 0.99, 400)
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(6.5, 4.2), layout="constrained")
        ax = fig.subplots()
        ax.plot(eps, logit_gap_theory(eps, num_classes), color=COLORS[0], lw=2.4, label=f"K = {num_classes} (this recipe)")
        if num_classes != 1000:
            ax.plot(eps, logit_gap_theory(eps, 1000), "--", color=PAPER_COLOR, lw=1.5, label="K = 1000 (ImageNet)")
        if eps_marked:
            gap = float(logit_gap_theory(eps_marked, num_classes))
            ax.plot([eps_marked], [gap], "o", color=COLORS[3], ms=8, zorder=3)
            ax.annotate(f"ε = {eps_marked:g}: gap {gap:.2f}", (eps_marked, gap), xytext=(12, 8),
                        textcoords="offset points", color=COLORS[3])
        ax.axhline(0, color="0.5", lw=0.8)
        ax.set_xlabel("label smoothing ε")
        ax.set_ylabel("optimal logit gap  log((K−1)(1−ε)/ε)")
        ax.set_title("Fig. 4a: theoretical logit gap")
        ax.legend()
    return fig


def plot_logit_gaps(runs: pd.DataFrame, gaps: pd.DataFrame) -> Figure:
    """Fig. 4b: density over the validation images of max logit − mean of the others, for the run
    without and the run with label smoothing (seeds pooled); the dashed line is the smoothed
    run's theoretical gap."""
    s = _students(runs)
    model = _first_model(runs)
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(6.5, 4.2), layout="constrained")
        ax = fig.subplots()
        picked = [(step, label) for step, label in zip(smoothing_steps(runs), ("one-hot", "label smoothing"))
                  if step is not None]
        values = {step: gaps[gaps["path"].isin(s[(s["model"] == model) & (s["step"] == step)]["path"])]["logit_gap"]
                  for step, _ in picked}
        finite = [v for v in values.values() if len(v)]
        bins = np.histogram_bin_edges(np.concatenate(finite), bins=40) if finite else 40
        for i, (step, label) in enumerate(picked):
            if len(values[step]):
                ax.hist(values[step], bins=bins, density=True, alpha=0.55, color=COLORS[i],
                        label=f"{label} ({step}, {len(values[step])} images)")
        if len(picked) == 2:
            row = s[(s["model"] == model) & (s["step"] == picked[1][0])].iloc[0]
            eps, k = run_config(row)["label_smoothing"]["eps"], row.get("num_classes")
            if k is not None and not (isinstance(k, float) and math.isnan(k)):
                ax.axvline(float(logit_gap_theory(eps, int(k))), ls="--", color=COLORS[1], lw=1.5,
                           label=f"theory at ε = {eps:g}")
        ax.set_xlabel("max logit − mean of the other logits")
        ax.set_ylabel("density")
        ax.set_title(f"Fig. 4b: logit gaps on the validation set ({model})")
        ax.legend(loc="best")
    return fig


def make_figures(results: Results) -> dict[str, Figure]:
    """Every figure the data allows, by file stem (from a runs.csv alone: no curves, no gaps, so
    neither `curves`, Fig. 3b nor Fig. 4b)."""
    runs, with_curves = results.runs, not results.curves.empty
    if _students(runs).empty:
        return {}
    figs = {"staircase": plot_staircase(runs)}
    if with_curves:
        figs["curves"] = plot_curves(runs, results.curves)
    if all(schedule_steps(runs)):
        figs["fig3a_lr"] = plot_lr_schedules(runs)
        if with_curves:
            figs["fig3b_val_top1"] = plot_schedule_curves(runs, results.curves)
    k = _students(runs)["num_classes"].dropna()
    if len(k):
        figs["fig4a_gap_theory"] = plot_logit_gap_theory(int(k.iloc[0]))
    if all(smoothing_steps(runs)) and not results.gaps.empty:
        figs["fig4b_logit_gaps"] = plot_logit_gaps(runs, results.gaps)
    if runs["train_time_s"].notna().any():
        figs["cost"] = plot_cost(runs)
    return figs


def save_figure(fig: Figure, path: Path) -> Path:
    """`fig` as the PNG or PDF `path` (by its suffix), written atomically: a reader never sees
    half a figure, and a PDF carries no date, so the same data gives the same bytes."""
    ext = Path(path).suffix.lstrip(".")
    with mpl.rc_context(STYLE):
        atomic_write(Path(path), lambda f: fig.savefig(f, format=ext, metadata=METADATA[ext]))
    return Path(path)


def write_figures(results: Results, out_dir: Path) -> list[Path]:
    """Save every figure as PNG and PDF under `out_dir`; returns the paths written."""
    return [save_figure(fig, Path(out_dir) / f"{stem}.{ext}") for stem, fig in make_figures(results).items()
            for ext in ("png", "pdf")]
