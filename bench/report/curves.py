"""Validation curves per step: one panel per model, or small multiples when the curves overlap."""
from __future__ import annotations

import math

import matplotlib as mpl
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from bench.report.style import COLORS, CONTEXT_COLOR, STYLE, step_order, students

OVERLAP_FRACTION = 0.25  # final values closer than this fraction of the curves' height overlap
PANELS_PER_ROW = 3


def mean_curve(curves: pd.DataFrame, runs: pd.DataFrame, step: str, model: str) -> pd.DataFrame:
    """Per epoch: mean, std and count over the seeds of one step's validation top-1."""
    paths = runs[(runs["role"] == "student") & (runs["model"] == model) & (runs["step"] == step)]["path"]
    c = curves[curves["path"].isin(paths)]
    return c.groupby("epoch")["val_top1"].agg(["mean", "std", "count"]).reset_index()


def plot_curve(ax, c: pd.DataFrame, color, label: str, **line) -> None:
    ax.plot(c["epoch"] + 1, c["mean"], "-o", color=color, lw=line.pop("lw", 2), ms=line.pop("ms", 3), label=label,
            **line)
    if (c["count"] > 1).any():
        ax.fill_between(c["epoch"] + 1, c["mean"] - c["std"].fillna(0), c["mean"] + c["std"].fillna(0),
                        color=color, alpha=0.18, lw=0)


def curves_overlap(by_step: dict[str, pd.DataFrame]) -> bool:
    """Whether the steps' mean curves end closer together than `OVERLAP_FRACTION` of the height
    the curves span: drawn on one axis they would lie on top of each other."""
    drawn = [c for c in by_step.values() if not c.empty]
    if len(drawn) < 2:
        return False
    finals = [c["mean"].iloc[-1] for c in drawn]
    height = max(c["mean"].max() for c in drawn) - min(c["mean"].min() for c in drawn)
    return height > 0 and max(finals) - min(finals) < OVERLAP_FRACTION * height


def plot_curves(runs: pd.DataFrame, curves: pd.DataFrame) -> Figure:
    """Validation top-1 vs epoch of every step (mean ± std over seeds), one panel per model; when
    a model's curves end on top of each other (`curves_overlap`, e.g. all near 100 %), one small
    panel per step instead, on shared axes, each with the other steps in grey behind it and its
    final value written in."""
    models = list(dict.fromkeys(students(runs)["model"]))
    by_model = {m: {step: mean_curve(curves, runs, step, m) for step in step_order(runs, m)} for m in models}
    if not any(curves_overlap(by_step) for by_step in by_model.values()):
        return _one_panel_per_model(by_model)
    cols = min(PANELS_PER_ROW, max(len(b) for b in by_model.values()))
    rows_of = {m: math.ceil(len(b) / cols) for m, b in by_model.items()}
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(3.4 * cols, 2.7 * sum(rows_of.values()) + 0.6), layout="constrained")
        axes = fig.subplots(sum(rows_of.values()), cols, squeeze=False, sharex=True, sharey=True)
        row = 0
        for model, by_step in by_model.items():
            for j, (step, c) in enumerate(by_step.items()):
                ax = axes[row + j // cols][j % cols]
                for other, oc in by_step.items():
                    if other != step and not oc.empty:
                        ax.plot(oc["epoch"] + 1, oc["mean"], "-", color=CONTEXT_COLOR, lw=1)
                if not c.empty:
                    plot_curve(ax, c, COLORS[j % len(COLORS)], step)
                    ax.annotate(f"{c['mean'].iloc[-1]:.2f}", (c["epoch"].iloc[-1] + 1, c["mean"].iloc[-1]),
                                xytext=(-4, -10), textcoords="offset points", ha="right", va="top", fontsize=9)
                n = int(c["count"].max()) if not c.empty else 0
                ax.set_title(f"{step} (n={n})" + (f", {model}" if len(models) > 1 else ""), fontsize=10)
            for j in range(len(by_step), rows_of[model] * cols):
                axes[row + j // cols][j % cols].set_visible(False)
            row += rows_of[model]
        axes[0][0].xaxis.set_major_locator(MaxNLocator(integer=True))
        fig.supxlabel("epoch")
        fig.supylabel("validation top-1 (%)")
        fig.suptitle("Validation curves, one panel per step (grey: the other steps)", fontweight="bold")
    return fig


def _one_panel_per_model(by_model: dict[str, dict[str, pd.DataFrame]]) -> Figure:
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(6.5 * len(by_model), 4.4), layout="constrained")
        axes = fig.subplots(1, len(by_model), squeeze=False)
        for ax, (model, by_step) in zip(axes[0], by_model.items()):
            for i, (step, c) in enumerate(by_step.items()):
                plot_curve(ax, c, COLORS[i % len(COLORS)], step)
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_xlabel("epoch")
            ax.set_ylabel("validation top-1 (%)")
            ax.set_title(f"Validation curves: {model}")
            ax.legend(loc="lower right", fontsize=9)
    return fig
