"""The ablation staircase: top-1 per step, drawn as the tree the recipe builds.

Each step is joined to the step it builds on (`parent_step`), so siblings (distill and mixup,
both on label smoothing) branch from their parent instead of being chained one after the other.
"""
from __future__ import annotations

import textwrap
from typing import Optional

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from bench.report.contrasts import binomial_se
from bench.report.stats import step_stats
from bench.report.style import COLORS, PAPER_COLOR, STYLE, students

SE_PER_AXIS = 8           # the y-axis spans at least this many standard errors of one top-1 ...
IMAGES_PER_AXIS = 10      # ... and at least this many validation images' worth of top-1
PAD = 0.12                # of the span, above and below the data


def staircase_segments(stats: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(model, parent step, step) for every step whose parent is a step of the same model: the
    lines of the staircase, one per step, branches included."""
    have = set(zip(stats["model"], stats["step"]))
    return [(m, p, s) for m, p, s in zip(stats["model"], stats["parent_step"], stats["step"])
            if isinstance(p, str) and (m, p) in have]


def measurement_noise(runs: pd.DataFrame) -> tuple[Optional[int], Optional[float]]:
    """(N, s.e.): the validation images each student was evaluated on (final.json's `val_images`),
    and the binomial standard error (percentage points) of one top-1 measured on N images at the
    students' mean accuracy, 100·√(p(1 − p)/N); (None, None) where the students' N is not one number."""
    s = students(runs)
    counts = set(s["val_images"].dropna().astype(int))
    if len(counts) != 1 or s["val_images"].isna().any():
        return None, None
    n = counts.pop()
    return n, binomial_se(float(s["top1"].astype(float).mean()), n)


def _limits(low: float, high: float, span: float) -> tuple[float, float]:
    """An axis of `span` (+ padding) around [low, high], kept within 0–100 %."""
    total = span * (1 + 2 * PAD)
    lo = (low + high) / 2 - total / 2
    lo = min(lo, 100 + span * PAD - total)     # no room above 100 %
    lo = max(lo, -span * PAD)
    return lo, lo + total


def _tick_label(step: str, parent, previous: Optional[str], first: bool) -> str:
    label = textwrap.fill(("" if first else "+ ") + step.replace("_", " "), 14)
    if isinstance(parent, str) and parent != previous:
        label += "\n" + textwrap.fill(f"(on {parent.replace('_', ' ')})", 16)
    return label


def plot_staircase(runs: pd.DataFrame, stats: Optional[pd.DataFrame] = None) -> Figure:
    """Top-1 per step and model: each seed as a dot, the mean with ± std error bars (n ≥ 2) and
    its n; a line from each step to the step it builds on. The paper's values, where the recipe
    names a table, are hollow diamonds on a right axis of the same scale (1 pp is as tall on both).

    The y-axis is chosen so that noise does not look like signal: it spans at least
    `SE_PER_AXIS` binomial standard errors of one top-1 on the validation set (so a difference
    of one standard error fills at most an eighth of the axis) and at least `IMAGES_PER_AXIS`
    validation images; the top-1 of one image and the standard error are printed under the
    title: autoscaling would zoom onto one- and two-image differences. The standard error is a floor
    for the seed-to-seed spread (which adds initialisation and data order); the dots show that
    spread where there are several seeds. The legend sits below the axes, never on a point.
    """
    stats = step_stats(runs) if stats is None else stats
    steps = stats.drop_duplicates("step").sort_values("step_index")["step"].tolist()
    x = {s: i for i, s in enumerate(steps)}
    models = list(dict.fromkeys(stats["model"]))
    seeds = students(runs)
    n_val, se = measurement_noise(runs)
    segments = staircase_segments(stats)
    with mpl.rc_context(STYLE):
        fig = Figure(figsize=(max(7.0, 1.35 * len(steps) + 2.5), 5.6), layout="constrained")
        ax = fig.subplots()
        width = 0.3 / max(len(models), 1)
        low, high = [], []
        for i, (model, s) in enumerate(stats.groupby("model", sort=False)):
            pos = {step: x[step] + (i - (len(models) - 1) / 2) * width for step in s["step"]}
            mean = dict(zip(s["step"], s["top1"]))
            for m, parent, step in segments:
                if m == model:
                    ax.plot([pos[parent], pos[step]], [mean[parent], mean[step]], "-", color=COLORS[i], lw=2, zorder=2)
            mine = seeds[seeds["model"] == model]
            ax.scatter([pos[v] for v in mine["step"]], mine["top1"], s=16, color=COLORS[i], alpha=0.45, lw=0, zorder=3)
            std = s["top1_std"].where(s["n"] > 1).fillna(0).to_numpy(float)
            ax.errorbar([pos[v] for v in s["step"]], s["top1"], yerr=std, fmt="o", color=COLORS[i], ms=7, capsize=4,
                        zorder=4, label=f"{model}: mean ± std over n seeds, dots: each seed; a line joins each step to the step it builds on")
            for step, n in zip(s["step"], s["n"]):   # a row of n's along the bottom, one row per model
                ax.text(pos[step], 0.015 + 0.045 * i, f"n={int(n)}", transform=ax.get_xaxis_transform(),
                        ha="center", va="bottom", fontsize=8, color=COLORS[i])
            low += [mine["top1"].min(), float(np.min(s["top1"] - std))]
            high += [mine["top1"].max(), float(np.max(s["top1"] + std))]
        floor = max(SE_PER_AXIS * se, IMAGES_PER_AXIS * 100 / n_val) if n_val else 0.0
        span = max(max(high) - min(low), floor, 1e-6)
        paper = stats.dropna(subset=["paper_top1"])
        if not paper.empty:
            span = max(span, float(paper["paper_top1"].max() - paper["paper_top1"].min()))
            _plot_paper(ax, paper, x, segments, span)
        ax.set_ylim(*_limits(min(low), max(high), span))
        first = stats[stats["model"] == models[0]].set_index("step")["parent_step"]
        ax.set_xticks(range(len(steps)), [_tick_label(s, first.get(s), steps[i - 1] if i else None, i == 0)
                                          for i, s in enumerate(steps)])
        ax.set_xlim(-0.5, len(steps) - 0.5)
        ax.set_xlabel("refinement (each on the step it builds on)")
        ax.set_ylabel("validation top-1 (%)")
        fig.suptitle("Ablation staircase", fontweight="bold")
        if n_val:
            ax.set_title(f"{n_val} validation images: one image = {100 / n_val:.2f} pp; binomial s.e. of one top-1 "
                         f"≈ {se:.2f} pp; the axis spans ≥ {SE_PER_AXIS} s.e.", fontsize=9, fontweight="normal")
        handles, labels = [], []
        for a in fig.axes:
            h, lab = a.get_legend_handles_labels()
            handles, labels = handles + h, labels + lab
        fig.legend(handles, labels, loc="outside lower center", fontsize=9)
    return fig


def _plot_paper(ax, paper: pd.DataFrame, x: dict[str, int], segments, span: float) -> None:
    """The published values on a twin axis with the left axis's scale, joined like ours."""
    right = ax.twinx()
    right.spines["right"].set_visible(True)
    right.grid(False)
    several = paper["model"].nunique() > 1
    for i, (model, s) in enumerate(paper.groupby("model", sort=False)):
        color, value = COLORS[i] if several else PAPER_COLOR, dict(zip(s["step"], s["paper_top1"]))
        for m, parent, step in segments:
            if m == model and parent in value and step in value:
                right.plot([x[parent], x[step]], [value[parent], value[step]], "--", color=color, lw=1, alpha=0.6)
        right.plot([x[v] for v in s["step"]], s["paper_top1"], "D", mfc="none", color=color, ms=8, alpha=0.8,
                   label=f"paper: {s['paper_label'].iloc[0]} on ImageNet (right axis, same scale)")
    right.set_ylim(*_limits(paper["paper_top1"].min(), paper["paper_top1"].max(), span))
    right.set_ylabel("paper top-1 (%, ImageNet)", color=PAPER_COLOR)
    right.tick_params(axis="y", colors=PAPER_COLOR)
