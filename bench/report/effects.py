"""Each trick's effect in every design whose runs a results folder holds, read from the runs'
`stack` (the baseline and the tricks they train with, bench.ablation.designs; for a staircase
run recorded before stacks were, its chain of steps):

- staircase: a step against the step it builds on (its Δ in deltas.csv);
- add-one: the baseline plus the trick against the baseline;
- leave-one-out: the full stack against it less the trick (the full stack: the set of tricks
  with the most of its leave-one-outs among the runs, at least two);
- factorial: over the largest set of k ≥ 2 tricks whose 2^k subsets are all there, each trick's
  main effect (its mean change over the other tricks' settings) and each two-way interaction
  (half the change of one trick's effect when the other is switched on).

Every effect is a contrast taken within each seed, over the seeds all its runs have: its mean, a
two-sided t-interval, P(improvement) (the t posterior of the mean under a flat prior), the std of
the per-seed contrast pooled over the design's effects, and the minimum detectable effect at 80 %
power with that std at the effect's seeds. `noise_floor` is the binomial s.e. of one top-1 on the
evaluation set: no number of seeds resolves an effect far below it on one evaluation set.
"""
from __future__ import annotations

import math
from itertools import combinations
from typing import Optional

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from scipy import stats as scipy_stats

from bench.report.stats import detectable_delta
from bench.report.style import COLORS

COLUMNS = ["model", "design", "effect", "n_pairs", "delta_top1", "ci_low", "ci_high", "p_improvement", "sd",
           "mde", "noise_floor", "extra_device_h", "delta_per_device_h"]
Cells = dict[frozenset, pd.Series]   # tricks on → top-1 by seed


def contrast(cells: Cells, terms: list[tuple[float, frozenset]]) -> np.ndarray:
    """Σ coefficient × top-1 of each set of tricks, per seed, over the seeds every set has."""
    seeds = set.intersection(*(set(cells[s].index) for _, s in terms))
    return np.array([sum(c * cells[s][seed] for c, s in terms) for seed in sorted(seeds)], dtype=float)


def factorial_terms(tricks: tuple[str, ...], effect: tuple[str, ...]) -> list[tuple[float, frozenset]]:
    """A 2^k factorial's main effect (one trick) or two-way interaction (two): each subset's sign
    is the product of ±1 for the effect's tricks on/off, over 2^(k−1)."""
    k, terms = len(tricks), []
    for r in range(k + 1):
        for subset in combinations(tricks, r):
            sign = math.prod(1 if t in subset else -1 for t in effect)
            terms.append((sign / 2 ** (k - 1), frozenset(subset)))
    return terms


def largest_factorial(cells: Cells, tricks: set[str]) -> tuple[str, ...]:
    """The largest set of ≥ 2 tricks (first in name order among equals) whose every subset has runs."""
    for k in range(len(tricks), 1, -1):
        for chosen in combinations(sorted(tricks), k):
            if all(frozenset(s) in cells for r in range(k + 1) for s in combinations(chosen, r)):
                return chosen
    return ()


def design_contrasts(cells: Cells, steps: list[tuple[str, frozenset, frozenset]]) -> list[tuple[str, str, list]]:
    """(design, effect, terms) of every effect the cells allow; `steps`: each staircase step's name,
    its tricks and its parent's."""
    found = [("staircase", name, [(1.0, own), (-1.0, parent)]) for name, own, parent in steps
             if own in cells and parent in cells]
    tricks = set().union(*cells)
    none = frozenset()
    found += [("add-one", t, [(1.0, frozenset({t})), (-1.0, none)]) for t in sorted(tricks)
              if none in cells and frozenset({t}) in cells]
    # the full stack: the set of tricks with the most of its leave-one-outs there (then the larger)
    left = {s: [t for t in sorted(s) if s - {t} in cells] for s in cells}
    full = max(cells, key=lambda s: (len(left[s]), len(s), sorted(s)))
    if len(left[full]) >= 2:   # one leave-one-out alone is a staircase step or an add-one
        found += [("leave-one-out", t, [(1.0, full), (-1.0, full - {t})]) for t in left[full]]
    chosen = largest_factorial(cells, tricks)
    found += [("factorial", t, factorial_terms(chosen, (t,))) for t in chosen]
    found += [("factorial", f"{a} × {b}", factorial_terms(chosen, (a, b))) for a, b in combinations(chosen, 2)]
    return found


def device_hours(runs: pd.DataFrame) -> pd.Series:
    """Each run's device time in hours: its training time × its devices (`world_size`, 1 where
    not recorded), and for a run that distils, its share of its teacher's: the teacher's device
    time split evenly over the runs of the folder that distil from it."""
    world = runs["world_size"].fillna(1) if "world_size" in runs else 1
    own = runs["train_time_s"].astype(float) * world / 3600
    teachers = runs["role"] == "teacher"
    by_path = dict(zip(runs.loc[teachers, "path"], own[teachers])) if "path" in runs else {}
    pupils = runs.loc[~teachers, "teacher"].value_counts() if "teacher" in runs else pd.Series(dtype=float)
    share = [by_path.get(t, 0.0) / pupils[t] if isinstance(t, str) and t in pupils and not is_teacher else 0.0
             for t, is_teacher in zip(runs.get("teacher", [None] * len(runs)), teachers)]
    return own + np.array(share)


def with_stacks(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` with every student's `stack`: recorded, or for a staircase run that predates the
    record, its step's chain through `parent_step` (the first step: the baseline alone)."""
    runs = runs.assign(stack=runs["stack"] if "stack" in runs else None)
    steps = runs[runs["role"] == "student"].drop_duplicates(["model", "step"]).set_index(["model", "step"])["parent_step"]

    def chain(model: str, step: str, depth: int = 0) -> Optional[str]:
        parent = steps.get((model, step))
        if not isinstance(parent, str):
            return step
        above = chain(model, parent, depth + 1) if (model, parent) in steps.index and depth < len(steps) else None
        return None if above is None else f"{above}+{step}"

    missing = runs["stack"].isna() & (runs["role"] == "student")
    runs.loc[missing, "stack"] = [chain(m, s) for m, s in zip(runs.loc[missing, "model"], runs.loc[missing, "step"])]
    return runs


def trick_effects(runs: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """One row per (model, design, effect) the runs allow."""
    runs = with_stacks(runs)
    if runs["stack"].isna().all():
        return pd.DataFrame(columns=COLUMNS)
    runs = runs.assign(device_h=device_hours(runs))
    students = runs[(runs["role"] != "teacher") & runs["stack"].notna()]
    rows = []
    for model, group in students.groupby("model", sort=True):
        tricks_of = {stack: frozenset(str(stack).split("+")[1:]) for stack in group["stack"].unique()}
        cells = {tricks_of[stack]: g.groupby("seed")["top1"].mean() for stack, g in group.groupby("stack")}
        hours = {tricks_of[stack]: g["device_h"].mean() for stack, g in group.groupby("stack")}
        by_step = group[group["role"] == "student"].drop_duplicates("step").set_index("step")
        steps = [(name, tricks_of[row["stack"]], tricks_of[by_step.loc[row["parent_step"], "stack"]])
                 for name, row in by_step.iterrows() if isinstance(row["parent_step"], str) and row["parent_step"] in by_step.index]
        baseline = cells.get(frozenset())
        p = (baseline.mean() if baseline is not None else group["top1"].mean()) / 100
        n_val = group["val_images"].dropna().iloc[0] if "val_images" in group and group["val_images"].notna().any() else np.nan
        floor = 100 * math.sqrt(p * (1 - p) / n_val) if n_val and n_val == n_val else np.nan
        found = [(design, effect, contrast(cells, terms), sum(c * hours[s] for c, s in terms))
                 for design, effect, terms in design_contrasts(cells, steps)]
        pooled = {}
        for design in {d for d, _, _, _ in found}:
            ss_dof = [(d.var(ddof=1) * (len(d) - 1), len(d) - 1) for dd, _, d, _ in found if dd == design and len(d) >= 2]
            dof = sum(k for _, k in ss_dof)
            pooled[design] = math.sqrt(sum(ss for ss, _ in ss_dof) / dof) if dof else np.nan
        base_h = hours.get(frozenset(), np.nan)
        for design, effect, d, extra in found:
            row = {"model": model, "design": design, "effect": effect, "noise_floor": floor, "extra_device_h": extra,
                   **paired_summary(d, pooled[design], confidence)}
            # per device-hour the trick adds; one adding under a tenth of the baseline's time is free within timing noise
            row["delta_per_device_h"] = row["delta_top1"] / extra if extra > 0.1 * base_h else np.nan
            rows.append(row)
    order = {d: i for i, d in enumerate(["staircase", "add-one", "leave-one-out", "factorial"])}
    out = pd.DataFrame(rows, columns=COLUMNS)
    return out.sort_values(["model", "design"], key=lambda c: c.map(order) if c.name == "design" else c,
                           kind="stable", ignore_index=True)


def paired_summary(d: np.ndarray, sd: float, confidence: float = 0.95) -> dict:
    """Mean of per-seed contrasts, its t-interval, P(improvement), and the MDE at std `sd`."""
    n = len(d)
    row = {"n_pairs": n, "delta_top1": d.mean() if n else np.nan, "ci_low": np.nan, "ci_high": np.nan,
           "p_improvement": np.nan, "sd": sd, "mde": np.nan}
    if n >= 2:
        se = d.std(ddof=1) / math.sqrt(n)
        half = scipy_stats.t.ppf(0.5 + confidence / 2, n - 1) * se
        prob = scipy_stats.t.cdf(d.mean() / se, n - 1) if se > 0 else (np.sign(d.mean()) + 1) / 2
        row.update(ci_low=d.mean() - half, ci_high=d.mean() + half, p_improvement=float(prob))
        if sd == sd and sd > 0:
            row["mde"] = detectable_delta(n, sd, confidence=confidence)
    return row


def effects_markdown(effects: pd.DataFrame, confidence: float = 0.95) -> str:
    """The effects as a Markdown table per model, with what the columns mean."""
    pct = f"{round(confidence * 100)}%"
    lines = [f"Each trick's Δ top-1 (points) in each design run, paired by seed: mean [{pct} interval], "
             "P(improvement), the std of a per-seed contrast (pooled over the design), the minimum effect "
             f"detectable at 80 % power with the seeds there, and the device-hours the trick adds (a distilling run "
             "charged its share of its teacher's) with Δ per added device-hour.", ""]
    for model, group in effects.groupby("model", sort=False):
        lines += [f"**{model}** (noise floor of one top-1: ±{group['noise_floor'].iloc[0]:.2f})", "",
                  "| design | effect | seeds | Δ top-1 | interval | P(improvement) | sd | detectable | extra device-h | Δ per device-h |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for r in group.itertuples():
            interval = f"[{r.ci_low:+.2f}, {r.ci_high:+.2f}]" if r.ci_low == r.ci_low else "–"
            cells = [r.design, r.effect, str(r.n_pairs), f"{r.delta_top1:+.2f}", interval,
                     f"{r.p_improvement:.2f}" if r.p_improvement == r.p_improvement else "–",
                     f"{r.sd:.2f}" if r.sd == r.sd else "–", f"{r.mde:.2f}" if r.mde == r.mde else "–",
                     f"{r.extra_device_h:+.3g}", f"{r.delta_per_device_h:+.3g}" if r.delta_per_device_h == r.delta_per_device_h else "–"]
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
    runs = with_stacks(runs).assign(device_h=device_hours(runs))
    runs = runs[(runs["role"] != "teacher") & runs["stack"].notna()]
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
        ax.set(title=model, xlabel="device-hours per run (mean over seeds)", ylabel="top-1 (%), mean over seeds")
        ax.legend(loc="lower right")
    return fig
