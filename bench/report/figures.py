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
from bench.report.frames import Results, run_config
from bench.report.stats import step_stats
from bench.runs import atomic_write

STYLE = {"font.size": 11, "axes.titlesize": 13, "axes.titleweight": "bold", "axes.labelsize": 12,
         "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
         "legend.frameon": False, "figure.dpi": 100, "savefig.dpi": 200, "savefig.bbox": "tight"}
COLORS = mpl.colormaps["tab10"].colors
PAPER_COLOR = "0.35"
METADATA = {"png": None, "pdf": {"CreationDate": None}}   # no date in a PDF: the same data, the same bytes


def _students(runs: pd.DataFrame) -> pd.DataFrame:
    return runs[runs["role"] == "student"]


def _first_model(runs: pd.DataFrame) -> str:
    return str(_students(runs)["model"].iloc[0])


def plot_staircase(runs: pd.DataFrame, stats: Optional[pd.DataFrame] = None) -> Figure:
    """Top-1 per step and model (mean ± std over seeds as error bars); the paper's values, where the
    recipe names a table, as hollow reference markers on their own axis at the right."""
    stats = step_stats(runs) if stats is None else stats
    steps = stats.drop_duplicates("step").sort_values("step_index")["step"].tolist()
    x = {s: i for i, s in enumerate(steps)}
    models = list(dict.fromkeys(stats["model"]))
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(max(6.5, 1.3 * len(steps) + 2), 4.5), layout="constrained")
        ax = fig.subplots()
        width = 0.5 / max(len(models), 1)
        for i, (model, s) in enumerate(stats.groupby("model", sort=False)):
            xs = np.array([x[v] for v in s["step"]]) + (i - (len(models) - 1) / 2) * width
            n = int(s["n"].max())
            ax.errorbar(xs, s["top1"], yerr=s["top1_std"].fillna(0), fmt="-o", color=COLORS[i], lw=2, ms=7,
                        capsize=4, label=f"{model} (ours, n={n} seed{'s' if n > 1 else ''})")
        paper = stats.dropna(subset=["paper_top1"])
        if not paper.empty:
            right = ax.twinx()
            right.spines["right"].set_visible(True)
            right.grid(False)
            paper_model = _students(runs).drop_duplicates("model").set_index("model")["paper_model"]
            for i, (model, s) in enumerate(paper.groupby("model", sort=False)):
                right.plot([x[v] for v in s["step"]], s["paper_top1"], "D--", mfc="none", color=COLORS[i], ms=8,
                           lw=1, alpha=0.7, label=f"paper: {paper_model.get(model, model)} on ImageNet (right axis)")
            right.set_ylabel("paper top-1 (%, ImageNet)", color=PAPER_COLOR)
            right.tick_params(axis="y", colors=PAPER_COLOR)
            handles = ax.get_legend_handles_labels()
            extra = right.get_legend_handles_labels()
            ax.legend(handles[0] + extra[0], handles[1] + extra[1], loc="upper left")
        else:
            ax.legend(loc="upper left")
        ax.set_xticks(range(len(steps)), [("+ " if i else "") + s.replace("_", " ") for i, s in enumerate(steps)],
                      rotation=20, ha="right")
        ax.set_xlabel("refinement (cumulative)")
        ax.set_ylabel("validation top-1 (%)")
        ax.set_title("Ablation staircase: each trick on top of the last")
    return fig


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


def _mean_curve(curves: pd.DataFrame, runs: pd.DataFrame, step: str, model: str) -> pd.DataFrame:
    paths = runs[(runs["role"] == "student") & (runs["model"] == model) & (runs["step"] == step)]["path"]
    c = curves[curves["path"].isin(paths)]
    return c.groupby("epoch")["val_top1"].agg(["mean", "std", "count"]).reset_index()


def _plot_curve(ax, c: pd.DataFrame, color, label: str) -> None:
    ax.plot(c["epoch"] + 1, c["mean"], "-o", color=color, lw=2, ms=3, label=label)
    if (c["count"] > 1).any():
        ax.fill_between(c["epoch"] + 1, c["mean"] - c["std"].fillna(0), c["mean"] + c["std"].fillna(0),
                        color=color, alpha=0.18, lw=0)


def plot_schedule_curves(runs: pd.DataFrame, curves: pd.DataFrame) -> Figure:
    """Fig. 3b: validation top-1 vs epoch of the step-decay and the cosine runs (mean ± std over seeds)."""
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(6.5, 4.2), layout="constrained")
        ax = fig.subplots()
        for i, step in enumerate(schedule_steps(runs)):
            if step is not None:
                _plot_curve(ax, _mean_curve(curves, runs, step, _first_model(runs)), COLORS[i], step)
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation top-1 (%)")
        ax.set_title("Fig. 3b: validation accuracy, step vs cosine")
        ax.legend(loc="lower right")
    return fig


def plot_curves(runs: pd.DataFrame, curves: pd.DataFrame) -> Figure:
    """Validation top-1 vs epoch of every step, one panel per model."""
    s = _students(runs)
    models = list(dict.fromkeys(s["model"]))
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(6.5 * len(models), 4.4), layout="constrained")
        axes = fig.subplots(1, len(models), squeeze=False)
        for ax, model in zip(axes[0], models):
            steps = s[s["model"] == model].drop_duplicates("step").sort_values("step_index")["step"]
            for i, step in enumerate(steps):
                _plot_curve(ax, _mean_curve(curves, runs, step, model), COLORS[i % len(COLORS)], step)
            ax.set_xlabel("epoch")
            ax.set_ylabel("validation top-1 (%)")
            ax.set_title(f"Validation curves: {model}")
            ax.legend(loc="lower right", fontsize=9)
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
    """Every figure the data allows, by file stem."""
    runs = results.runs
    if _students(runs).empty:
        return {}
    figs = {"staircase": plot_staircase(runs), "curves": plot_curves(runs, results.curves)}
    if all(schedule_steps(runs)):
        figs["fig3a_lr"] = plot_lr_schedules(runs)
        figs["fig3b_val_top1"] = plot_schedule_curves(runs, results.curves)
    k = _students(runs)["num_classes"].dropna()
    if len(k):
        figs["fig4a_gap_theory"] = plot_logit_gap_theory(int(k.iloc[0]))
    if all(smoothing_steps(runs)) and not results.gaps.empty:
        figs["fig4b_logit_gaps"] = plot_logit_gaps(runs, results.gaps)
    return figs


def write_figures(results: Results, out_dir: Path) -> list[Path]:
    """Save every figure as PNG and PDF under `out_dir`; returns the paths written."""
    out_dir = Path(out_dir)
    written = []
    for stem, fig in make_figures(results).items():
        for ext in ("png", "pdf"):
            path = out_dir / f"{stem}.{ext}"
            with mpl.rc_context(STYLE):   # atomic_write: a reader never sees half a figure
                atomic_write(path, lambda f, fig=fig, ext=ext: fig.savefig(f, format=ext, metadata=METADATA[ext]))
            written.append(path)
    return written
