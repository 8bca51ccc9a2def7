"""Statistics over the runs DataFrame: per-step mean ± std, Δ against the parent step with
seed-paired t-intervals, the paper's published values beside ours."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import pandas as pd
from scipy import optimize
from scipy import stats as scipy_stats

from bench.report.frames import PAPER_DATASET, paper_values
from bench.runs.rundir import CONFIG_PREFIX


def paired_deltas(df: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Each student step's top-1 change against the step it builds on, paired by seed: over the
    `n_pairs` seeds both steps have, the mean difference, its two-sided `confidence` t-interval
    (n_pairs ≥ 2) and whether it excludes 0. Seeds only one of the two steps has are left out."""
    students = df[df["role"] == "student"]
    rows = []
    for (model, step), group in students.groupby(["model", "step"], sort=False):
        parent = group["parent_step"].iloc[0]
        base = students[(students["model"] == model) & (students["step"] == parent)]
        pairs = group.merge(base, on="seed", suffixes=("", "_parent"))
        d = (pairs["top1"] - pairs["top1_parent"]).to_numpy(float)
        row = {"model": model, "step": step, "parent_step": parent, "n_pairs": len(d),
               "delta_top1": d.mean() if len(d) else np.nan, "ci_low": np.nan, "ci_high": np.nan, "excludes_zero": False}
        if len(d) >= 2:
            half = scipy_stats.t.ppf(0.5 + confidence / 2, len(d) - 1) * d.std(ddof=1) / math.sqrt(len(d))
            row.update(ci_low=d.mean() - half, ci_high=d.mean() + half,
                       excludes_zero=bool(d.mean() - half > 0 or d.mean() + half < 0))
        rows.append(row)
    return pd.DataFrame(rows, columns=["model", "step", "parent_step", "n_pairs", "delta_top1", "ci_low",
                                       "ci_high", "excludes_zero"])


def step_stats(df: pd.DataFrame, paper: Optional[pd.DataFrame] = None, confidence: float = 0.95) -> pd.DataFrame:
    """One row per (model, student step) in recipe order: n seeds, mean and std of top-1/top-5,
    Δ top-1 against the parent step over the seeds both have (`n_pairs`, from `paired_deltas`)
    and its interval, and the paper's values.

    A Δ between two means over different seeds would mix a trick's effect with seed noise (one
    seed of a step minus the mean of two of its parent), so Δ is only ever the paired mean. The
    paper's columns are its own: `paper_delta_top1` is its value at this step minus its value at
    the same parent step. `vs_paper_*` (ours − published) is filled only for runs on the paper's
    data set: a difference between top-1 on digits and top-1 on ImageNet means nothing.
    """
    students = df[df["role"] == "student"]
    columns = ["model", "step_index", "step", "parent_step", "n", "top1", "top1_std", "top5", "top5_std",
               "n_pairs", "delta_top1", "ci_low", "ci_high", "excludes_zero", "paper_top1", "paper_delta_top1",
               "paper_top5", "vs_paper_top1", "vs_paper_top5", "paper_table", "paper_label"]
    if students.empty:
        return pd.DataFrame(columns=columns)
    stats = (students.groupby(["model", "step_index", "step"], sort=True)
             .agg(parent_step=("parent_step", "first"), n=("seed", "nunique"), top1=("top1", "mean"),
                  top1_std=("top1", "std"), top5=("top5", "mean"), top5_std=("top5", "std"))
             .reset_index())
    deltas = paired_deltas(students, confidence)
    stats = stats.merge(deltas.drop(columns="parent_step"), on=["model", "step"], how="left")
    stats.loc[stats["parent_step"].isna(), "n_pairs"] = np.nan   # a first step has nothing to pair with
    paper = paper_values(df) if paper is None else paper
    stats = stats.merge(paper, on=["model", "step"], how="left")
    published = stats.set_index(["model", "step"])["paper_top1"]
    stats["paper_delta_top1"] = stats["paper_top1"] - [published.get((m, p), np.nan) if isinstance(p, str) else np.nan
                                                       for m, p in zip(stats["model"], stats["parent_step"])]
    same_data = stats["model"].map(_on_paper_data(students))
    stats["vs_paper_top1"] = (stats["top1"] - stats["paper_top1"]).where(same_data)
    stats["vs_paper_top5"] = (stats["top5"] - stats["paper_top5"]).where(same_data)
    return stats[columns].sort_values(["model", "step_index"], ignore_index=True)


def _on_paper_data(students: pd.DataFrame) -> dict[str, bool]:
    """Per model: whether all its runs are on the paper's data set."""
    key = f"{CONFIG_PREFIX}data.dataset"
    if key not in students:
        return {m: False for m in students["model"].unique()}
    return {m: bool((g[key] == PAPER_DATASET).all()) for m, g in students.groupby("model")}



def ablation_table(df: pd.DataFrame, paper: Optional[pd.DataFrame] = None, confidence: float = 0.95) -> pd.DataFrame:
    """The Table-6 shape: steps in recipe order × (model, statistic), from `step_stats`."""
    stats = step_stats(df, paper, confidence)
    if stats.empty:
        return pd.DataFrame()
    order = stats.drop_duplicates("step").sort_values("step_index")["step"].tolist()
    values = [c for c in stats.columns if c not in ("model", "step_index", "step", "parent_step")]
    wide = stats.pivot(index="step", columns="model", values=values).reindex(order)
    wide = wide.swaplevel(axis=1).sort_index(axis=1, level=0, sort_remaining=False)
    return wide[[(m, v) for m in dict.fromkeys(stats["model"]) for v in values]]


def seed_noise(df: pd.DataFrame) -> tuple[float, int]:
    """The std of one step's Δ between seeds, pooled over the steps of a results folder (each
    step's paired differences against its parent, variances weighted by their degrees of freedom),
    and those degrees of freedom; (nan, 0) where no step has 2 paired seeds."""
    students = df[df["role"] == "student"]
    ss, dof = 0.0, 0
    for (model, _), group in students.groupby(["model", "step"], sort=False):
        base = students[(students["model"] == model) & (students["step"] == group["parent_step"].iloc[0])]
        pairs = group.merge(base, on="seed", suffixes=("", "_parent"))
        d = (pairs["top1"] - pairs["top1_parent"]).to_numpy(float)
        if len(d) >= 2:
            ss, dof = ss + d.var(ddof=1) * (len(d) - 1), dof + len(d) - 1
    return (math.sqrt(ss / dof), dof) if dof else (math.nan, 0)


def paired_power(delta: float, sd: float, n: int, confidence: float = 0.95) -> float:
    """P(a two-sided paired t-test over n seeds rejects Δ = 0) when the true Δ is `delta` and a
    per-seed Δ has std `sd`: the non-central t with n − 1 degrees of freedom and non-centrality
    delta·√n / sd beyond the critical value."""
    crit = scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)
    nc = abs(delta) * math.sqrt(n) / sd
    upper, lower = scipy_stats.nct.sf(crit, n - 1, nc), scipy_stats.nct.cdf(-crit, n - 1, nc)
    # scipy's non-central t gives NaN far in a tail: the lower one from nc ≈ 8 on, where
    # P(T < −crit) ≤ P(Z < −nc) < 1e-14 (T < −crit needs Z + nc < 0)
    lower = 0.0 if math.isnan(lower) else lower
    if math.isnan(upper):
        return 1.0 if nc > crit else math.nan
    return float(upper + lower)


def seeds_to_detect(delta: float, sd: float, power: float = 0.8, confidence: float = 0.95, most: int = 10_000) -> int:
    """The fewest seeds per step (paired with its parent's) for `paired_power` ≥ `power`."""
    n = 2
    while paired_power(delta, sd, n, confidence) < power:
        n += 1
        if n > most:
            raise ValueError(f"more than {most} seeds")
    return n


def detectable_delta(n: int, sd: float, power: float = 0.8, confidence: float = 0.95) -> float:
    """The minimum detectable effect: the Δ that n paired seeds find with probability `power`."""
    crit = scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)   # at non-centrality 4·crit + 10, power ≥ 0.99999
    return float(optimize.brentq(lambda d: paired_power(d, sd, n, confidence) - power, 1e-9 * sd,
                                 (4 * crit + 10) * sd / math.sqrt(n)))


def seeds_sentence(delta: float, sd: float, dof: int, seeds: int, source: str) -> str:
    """What `plan --detect` says: the seeds per step that find `delta` at 80 % power, and the Δ the
    planned seeds can find."""
    have = (f"the {seeds} seeds planned detect {detectable_delta(seeds, sd):.2f}" if seeds >= 2
            else "the 1 seed planned has no interval")
    return (f"To detect Δ top-1 = {delta:g} at 80 % power (two-sided paired t at 95 %): {seeds_to_detect(delta, sd)} "
            f"seeds per step; {have}. Seed noise from {source}: a step's Δ varies between seeds with std {sd:.2f} "
            f"points (pooled over its steps, {dof} degrees of freedom).")
