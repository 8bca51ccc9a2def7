"""The staircase's numbers over the runs DataFrame: per-step mean ± std, Δ against the parent step
from the contrast engine (bench.report.contrasts), the paper's published values beside ours."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import pandas as pd

from bench.report.contrasts import effects, pooled_sd
from bench.report.frames import PAPER_DATASET, paper_values
from bench.runs.rundir import CONFIG_PREFIX


def staircase_deltas(runs: pd.DataFrame, correct: Optional[dict] = None, confidence: float = 0.95) -> pd.DataFrame:
    """Each student step's top-1 change against the step it builds on, from the contrast engine
    (bench.report.contrasts): paired by seed over the `n_pairs` seeds both steps have (0: none, or
    a first step), its t-interval and p, the Holm-adjusted p over the folder's steps (one family),
    whether it is detected after that, and its test-set noise where the runs kept their per-image files."""
    steps = runs[runs["role"] == "student"].drop_duplicates(["model", "step"])
    found = effects(runs, correct, confidence, designs=("staircase",)).rename(columns={"effect": "step"})
    out = steps[["model", "step", "parent_step"]].merge(found.drop(columns=["parent_step"], errors="ignore"),
                                                         on=["model", "step"], how="left")
    out["n_pairs"] = out["n_pairs"].fillna(0).astype(int)
    out["detected"] = out["detected"].astype("boolean").fillna(False).astype(bool)
    return out[DELTA_COLUMNS].reset_index(drop=True)


DELTA_COLUMNS = ["model", "step", "parent_step", "n_pairs", "delta_top1", "ci_low", "ci_high", "p", "p_holm", "detected",
                 "test_se", "p_mcnemar"]


def step_stats(df: pd.DataFrame, paper: Optional[pd.DataFrame] = None, confidence: float = 0.95,
               correct: Optional[dict] = None) -> pd.DataFrame:
    """One row per (model, student step) in recipe order: n seeds, mean and std of top-1/top-5,
    Δ top-1 against the parent step over the seeds both have (`n_pairs`, from `staircase_deltas`)
    with its interval, p and Holm-adjusted p, and the paper's values.

    A Δ between two means over different seeds would mix a trick's effect with seed noise (one
    seed of a step minus the mean of two of its parent), so Δ is only ever the paired mean. The
    paper's columns are its own: `paper_delta_top1` is its value at this step minus its value at
    the same parent step. `vs_paper_*` (ours − published) is filled only for runs on the paper's
    data set: a difference between top-1 on digits and top-1 on ImageNet means nothing.
    """
    students = df[df["role"] == "student"]
    columns = ["model", "step_index", "step", "parent_step", "n", "top1", "top1_std", "top5", "top5_std",
               "n_pairs", "delta_top1", "ci_low", "ci_high", "p", "p_holm", "detected", "test_se", "paper_top1", "paper_delta_top1",
               "paper_top5", "vs_paper_top1", "vs_paper_top5", "paper_table", "paper_label"]
    if students.empty:
        return pd.DataFrame(columns=columns)
    stats = (students.groupby(["model", "step_index", "step"], sort=True)
             .agg(parent_step=("parent_step", "first"), n=("seed", "nunique"), top1=("top1", "mean"),
                  top1_std=("top1", "std"), top5=("top5", "mean"), top5_std=("top5", "std"))
             .reset_index())
    deltas = staircase_deltas(df, correct, confidence)
    stats = stats.merge(deltas.drop(columns=["parent_step", "p_mcnemar"]), on=["model", "step"], how="left")
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



def ablation_table(df: pd.DataFrame, paper: Optional[pd.DataFrame] = None, confidence: float = 0.95,
                   correct: Optional[dict] = None) -> pd.DataFrame:
    """The Table-6 shape: steps in recipe order × (model, statistic), from `step_stats`."""
    stats = step_stats(df, paper, confidence, correct)
    if stats.empty:
        return pd.DataFrame()
    order = stats.drop_duplicates("step").sort_values("step_index")["step"].tolist()
    values = [c for c in stats.columns if c not in ("model", "step_index", "step", "parent_step")]
    wide = stats.pivot(index="step", columns="model", values=values).reindex(order)
    wide = wide.swaplevel(axis=1).sort_index(axis=1, level=0, sort_remaining=False)
    return wide[[(m, v) for m in dict.fromkeys(stats["model"]) for v in values]]


def seed_noise(df: pd.DataFrame) -> tuple[float, int]:
    """The std of one step's Δ between seeds, pooled over the steps of a results folder, and its
    degrees of freedom; (nan, 0) where no step has 2 paired seeds."""
    found = effects(df, designs=("staircase",))
    return pooled_sd(list(found["per_seed"])) if not found.empty else (math.nan, 0)
