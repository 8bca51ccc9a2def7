"""The contrast engine's promises: a trick that lengthens training keeps the schedule's shape in
every design cell, a contrast whose arms differ beyond the trick is refused before anything runs,
Holm's correction recomputed by hand, and the test set's own noise of a paired difference."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_designs import runs_frame, trick_effects

from bench.ablation import plan
from bench.cli import main
from bench.config import load_recipe, schedule_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("design", ["add-one", "leave-one-out", "factorial"])
@pytest.mark.parametrize("recipe_file", ["table6.yaml", "fashion-mnist-table6-cpu.yaml"])
def test_a_trick_that_trains_longer_keeps_the_schedules_shape_in_every_cell(design, recipe_file):
    """Mixup trains 200 epochs (5) where the base trains 120 (3) on a step schedule: every cell's
    lr, as a share of its peak, at 25, 50 and 75 % of its training after warmup is that of the
    staircase run with its schedule kind (efficient for step decay, cosine for cosine)."""
    path = ROOT / "recipes" / recipe_file
    recipe = load_recipe(path)
    runs = plan(recipe, seeds=[0], design=design, where=str(path))
    staircase = {s.config.schedule.kind: s.config for s in plan(recipe, seeds=[0], where=str(path))
                 if s.step in ("efficient", "cosine") and s.model == runs[-1].model}

    def shape(cfg):
        lr, s, per_epoch = schedule_for(cfg, 1000), cfg.schedule, 1000
        warm, total = s.warmup_epochs * per_epoch, s.epochs * per_epoch
        return [lr(warm + round(f * (total - warm))) / cfg.peak_lr() for f in (0.25, 0.5, 0.75)]

    lengthened = [r for r in runs if r.role != "teacher" and r.config.mixup is not None]
    assert any(r.config.schedule.kind == "step" for r in lengthened)   # the case that was 110 epochs at lr/1000
    for run in runs:
        if run.role != "teacher":
            assert shape(run.config) == pytest.approx(shape(staircase[run.config.schedule.kind])), run.label


def test_a_factorials_effects_holm_adjusted_from_a_hand_made_frame():
    """Three seeds of a 2² over cosine and label smoothing: each effect's per-seed contrast, its
    one-sample t p-value and Holm's step-down over the folder's distinct contrasts, by hand."""
    from scipy import stats as scipy_stats
    tops = {"efficient": [90.0, 90.4, 89.8], "efficient+cosine": [91.1, 91.2, 91.0],
            "efficient+label_smoothing": [90.2, 90.9, 89.7], "efficient+cosine+label_smoothing": [92.0, 91.9, 92.3]}
    fx = trick_effects(runs_frame(tops)).set_index(["design", "effect"])
    t = {k: np.array(v) for k, v in tops.items()}
    base, c, ls, both = t["efficient"], t["efficient+cosine"], t["efficient+label_smoothing"], t["efficient+cosine+label_smoothing"]
    by_hand = {("staircase", "cosine"): c - base, ("staircase", "label_smoothing"): both - c,
               ("add-one", "label_smoothing"): ls - base, ("leave-one-out", "cosine"): both - ls,
               ("factorial", "cosine"): (c - base + both - ls) / 2, ("factorial", "label_smoothing"): (ls - base + both - c) / 2,
               ("factorial", "cosine × label_smoothing"): (both - ls - c + base) / 2}
    # leave-one-out label_smoothing is the staircase's label_smoothing step: one row, not two
    assert set(fx.index) == set(by_hand) and fx.loc[("staircase", "label_smoothing"), "also"] == "leave-one-out"
    p = pd.Series({k: scipy_stats.ttest_1samp(d, 0).pvalue for k, d in by_hand.items()}).sort_values()
    holm, running = {}, 0.0
    for i, (k, value) in enumerate(p.items()):
        running = max(running, min(1.0, (len(p) - i) * value))
        holm[k] = running
    for k, d in by_hand.items():
        assert fx.loc[k, "delta_top1"] == pytest.approx(d.mean())
        assert fx.loc[k, "p"] == pytest.approx(p[k])
        assert fx.loc[k, "p_holm"] == pytest.approx(holm[k])
        assert fx.loc[k, "detected"] == (holm[k] < 0.05)
    assert fx["detected"].any() and not fx["detected"].all()   # the family decides, not each test alone
    assert ((fx["p"] < 0.05) & ~fx["detected"]).any()


def test_the_test_sets_own_noise_of_a_paired_difference():
    """Two runs per seed on the same 8 images: the per-image difference's s.e. and McNemar's exact
    p over the discordant images of both seeds; a run without its file leaves the columns empty."""
    from scipy import stats as scipy_stats
    runs = runs_frame({"efficient": [50.0, 62.5], "efficient+cosine": [75.0, 75.0]}, val_images=8)
    right = {"m/efficient/seed0": [1, 1, 1, 1, 0, 0, 0, 0], "m/cosine/seed0": [1, 1, 1, 1, 1, 1, 0, 0],
             "m/efficient/seed1": [1, 1, 1, 1, 1, 0, 0, 0], "m/cosine/seed1": [1, 1, 1, 0, 1, 1, 1, 0]}
    correct = {p: np.array(v, bool) for p, v in right.items()}
    fx = trick_effects(runs, correct).set_index(["design", "effect"]).loc[("staircase", "cosine")]
    d = [np.array(right[f"m/cosine/seed{k}"], float) - np.array(right[f"m/efficient/seed{k}"], float) for k in (0, 1)]
    assert fx["test_se"] == pytest.approx(100 * math.sqrt(d[0].var(ddof=1) / 8 + d[1].var(ddof=1) / 8) / 2)
    # discordant: seed 0 cosine alone right on 2, the baseline alone on 0; seed 1: 2 and 1
    assert fx["p_mcnemar"] == pytest.approx(scipy_stats.binomtest(4, 5).pvalue)
    del correct["m/efficient/seed0"]
    assert math.isnan(trick_effects(runs, correct).set_index(["design", "effect"]).loc[("staircase", "cosine"), "test_se"])


def test_a_contrast_whose_arms_differ_beyond_the_trick_is_refused_in_one_line(capsys):
    """Milestones given with --set stay where they are in the runs mixup lengthens: the add-one
    mixup contrast would then change the schedule's shape as well, and nothing is planned."""
    path = ROOT / "recipes" / "fashion-mnist-table6-cpu.yaml"
    args = ["plan", str(path), "--design", "add-one", "--tricks", "cosine", "mixup"]
    assert main(args) == 0
    capsys.readouterr()
    assert main(args + ["--set", "schedule.milestones=[1,2]"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "efficient+mixup" in err and "schedule's shape" in err and str(path) in err


def test_what_the_arms_differ_in_beyond_the_tricks_own_set():
    from bench.ablation.designs import beyond_the_trick
    from bench.config import RunConfig
    recipe = load_recipe(ROOT / "recipes" / "fashion-mnist-table6-cpu.yaml")
    base = RunConfig.model_validate({"schedule": {"kind": "step", "epochs": 3, "milestones": [1, 2]}})
    mixed = RunConfig.model_validate({**base.model_dump(), "mixup": {"alpha": 0.2},
                                      "schedule": {"kind": "step", "epochs": 5, "milestones": [1.666667, 3.333333]}})
    assert beyond_the_trick(recipe, "mixup", mixed, base) == []
    wider = RunConfig.model_validate({**mixed.model_dump(), "data": {**mixed.data.model_dump(), "global_batch_size": 256}})
    assert beyond_the_trick(recipe, "mixup", wider, base) == ["data.global_batch_size"]
    cosine = RunConfig.model_validate({**base.model_dump(), "schedule": {"kind": "cosine", "epochs": 3, "milestones": [2]}})
    assert beyond_the_trick(recipe, "cosine", cosine, base) == []   # a cosine run's milestones are unused
