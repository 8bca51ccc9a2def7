"""Each trick's effect in every design whose runs a results folder holds (the contrasts:
bench.report.contrasts), as Markdown, and its cost as a figure:

- staircase: a step against the step it builds on;
- add-one: the baseline plus the trick against the baseline;
- leave-one-out: the full stack against it less the trick (the full stack: the set of tricks
  with the most of its leave-one-outs among the runs, at least two);
- factorial: over the largest set of k ≥ 2 tricks whose 2^k subsets are all there, each trick's
  main effect (its mean change over the other tricks' settings) and each two-way interaction
  (half the change of one trick's effect when the other is switched on).
"""
from __future__ import annotations

import math

import pandas as pd
from matplotlib.figure import Figure

from bench.report.contrasts import EFFECT_COLUMNS, effects, tidy
from bench.report.style import COLORS


def trick_effects(runs: pd.DataFrame, correct=None, confidence: float = 0.95) -> pd.DataFrame:
    """effects.csv: one row per (model, distinct contrast), one family for Holm's correction."""
    return effects(runs, correct, confidence)[EFFECT_COLUMNS]


def _num(x: float, fmt: str = "{:+.2f}") -> str:
    return "–" if x is None or x != x else fmt.format(x)


def effects_markdown(found: pd.DataFrame, confidence: float = 0.95) -> str:
    """The effects as a Markdown table per model, with their family and what the columns mean."""
    pct, alpha = f"{round(confidence * 100)} %", 1 - confidence
    tests = int(found["p"].notna().sum())
    lines = [f"Each trick's Δ top-1 (points) in each design run, paired by seed: mean [{pct} t-interval], its p and "
             f"its p after Holm's correction over the family of all {tests} tests of this table; **detected** means "
             f"Holm-adjusted p < {alpha:.2g}. A contrast two designs ask for is one row (`staircase = add-one`). "
             "Test-set s.e.: the noise of the same contrast from the evaluation images alone (the runs' "
             "per-image files; – where a run has none), with McNemar's exact p for two arms. Detectable: the Δ found "
             "at 80 % power with these seeds (the per-seed sd pooled over the design). Extra device-h: the seed-paired "
             "device-hours the contrast adds [interval] (a distilling run charged its share of its teacher's), from "
             "each run's cost basis (where the arms' runs mix bases or machines, the difference measures no cost); Δ per "
             "device-h only where that cost is detected on one basis and the contrast has two arms. "
             "Arms differ in: every resolved setting that differs between its arms.", ""]
    for model, group in found.groupby("model", sort=False):
        lines += [f"**{model}**", "",
                  "| design | effect | seeds | Δ top-1 [interval] | p | p (Holm) | detected | test-set s.e. | McNemar p "
                  "| detectable | extra device-h [interval] | Δ per device-h | cost basis | arms differ in |",
                  "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for r in group.itertuples():
            interval = f" [{r.ci_low:+.2f}, {r.ci_high:+.2f}]" if r.ci_low == r.ci_low else ""
            cost = f" [{r.extra_low:+.2g}, {r.extra_high:+.2g}]" if r.extra_low == r.extra_low else ""
            within = " (within noise)" if r.extra_low == r.extra_low and r.extra_low <= 0 <= r.extra_high else ""
            within += " (bases mixed: no measurement)" if ";" in str(r.cost_basis) else ""
            cells = [" = ".join(filter(None, [r.design, r.also])), r.effect, str(r.n_pairs), f"{r.delta_top1:+.2f}{interval}", _num(r.p, "{:.2g}"),
                     _num(r.p_holm, "{:.2g}"), "**yes**" if r.detected else "no", _num(r.test_se, "±{:.2f}"),
                     _num(r.p_mcnemar, "{:.2g}"), _num(r.mde, "{:.2f}"), f"{r.extra_device_h:+.2g}{cost}{within}",
                     _num(r.delta_per_device_h, "{:+.3g}"), r.cost_basis or "–", r.differs or "–"]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def pareto_front(points: pd.DataFrame) -> pd.DataFrame:
    """The points no other beats on both axes (more top-1 for no more device time), cheapest first."""
    front, best = [], -math.inf
    for _, row in points.sort_values(["device_h", "top1"], ascending=[True, False]).iterrows():
        if row["top1"] > best:
            front.append(row)
            best = row["top1"]
    return pd.DataFrame(front)


def plot_cost(runs: pd.DataFrame):
    """Mean top-1 against mean device-hours (a distilling run charged its share of its teacher's)
    for every set of tricks run, one panel per model, the Pareto front drawn through them."""
    runs = tidy(runs)
    models = sorted(runs["model"].unique())
    fig = Figure(figsize=(6 * len(models), 4.5), layout="constrained")
    for ax, model in zip(fig.subplots(1, len(models), squeeze=False)[0], models):
        points = runs[runs["model"] == model].groupby("stack", as_index=False).agg(top1=("top1", "mean"), device_h=("device_h", "mean"))
        front = pareto_front(points)
        ax.step(front["device_h"], front["top1"], where="post", color=COLORS[1], label="Pareto front", zorder=1)
        ax.scatter(points["device_h"], points["top1"], color=COLORS[0], zorder=2)
        for row in points.itertuples():
            tricks = row.stack.split("+")
            ax.annotate(" + ".join(tricks[1:]) or tricks[0], (row.device_h, row.top1), fontsize=7,
                        xytext=(4, 2), textcoords="offset points")
        basis = "; ".join(sorted(set(runs.loc[runs["model"] == model, "cost_basis"].astype(str))))
        ax.set(title=model, xlabel=f"device-hours per run (mean over seeds; {basis})", ylabel="top-1 (%), mean over seeds")
        ax.legend(loc="lower right")
    return fig
