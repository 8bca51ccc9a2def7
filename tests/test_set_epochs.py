"""`--set schedule.epochs=N` on every shipped recipe: the step-decay milestones move with the
epochs, every run (mixup steps included) gets N, and an error names only the runs planned."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.ablation import plan
from bench.cli import main
from bench.config import load_recipe, parse_override
from bench.config.overrides import scale_milestones
from bench.errors import ConfigError

ROOT = Path(__file__).resolve().parent.parent
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("epochs", [5, 300])
@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_set_epochs_plans_every_shipped_recipe(path, epochs):
    recipe = load_recipe(path)
    before = plan(recipe, where=str(path))
    after = plan(recipe, overrides=(parse_override(f"schedule.epochs={epochs}"),), where=str(path))
    assert [s.path for s in after] == [s.path for s in before]
    for old, new in zip(before, after):
        s = new.config.schedule
        assert s.epochs == epochs, new.label   # every run, a mixup step's own epochs too
        assert s.milestones == scale_milestones(old.config.schedule.milestones, old.config.schedule.epochs, epochs)
        assert all(0 < m <= epochs for m in s.milestones) and s.milestones == sorted(set(s.milestones))
        rest = old.config.model_copy(update={"schedule": s})
        assert new.config == rest, new.label   # nothing else changes


def test_milestones_keep_their_fraction_of_each_runs_training():
    assert scale_milestones([30, 60, 90], 120, 12) == [3, 6, 9]
    assert scale_milestones([30, 60, 90], 120, 240) == [60, 120, 180]
    assert scale_milestones([30, 60, 90], 200, 20) == [3, 6, 9]   # a mixup step of 200 epochs: its own fractions
    assert scale_milestones([30, 60, 90], 120, 2) == [0.5, 1, 1.5]   # a fraction of an epoch: the schedule takes its iteration
    assert scale_milestones([1, 2], 3, 5) == [1.666667, 3.333333]
    assert scale_milestones([], 120, 5) == []


def test_the_mixup_steps_own_epochs_are_overridden_too():
    recipe = load_recipe(ROOT / "recipes" / "table6.yaml")
    specs = {s.step: s.config for s in plan(recipe, models=["resnet50d"], overrides=(("schedule.epochs", 12),))}
    assert specs["mixup"].schedule.epochs == specs["efficient"].schedule.epochs == 12
    assert specs["resnet152d_mixup"].schedule.epochs == 12
    assert specs["efficient"].schedule.milestones == [3, 6, 9]
    assert specs["mixup"].schedule.milestones == [1.8, 3.6, 5.4]   # 30, 60, 90 of its 200 epochs


def test_milestones_given_with_the_epochs_are_taken_as_given():
    recipe = load_recipe(ROOT / "recipes" / "default.yaml")
    overrides = (parse_override("schedule.epochs=10"), parse_override("schedule.milestones=[3]"))
    assert {s.config.schedule.milestones == [3] for s in plan(recipe, overrides=overrides)} == {True}
    reversed_order = tuple(reversed(overrides))
    assert {s.config.schedule.milestones == [3] for s in plan(recipe, overrides=reversed_order)} == {True}


def test_the_recipes_own_epochs_change_nothing():
    path = ROOT / "recipes" / "fashion-mnist-table6-cpu.yaml"
    recipe = load_recipe(path)
    same = plan(recipe, overrides=(("schedule.epochs", 3),), only=["efficient", "cosine"])
    assert [s.config.config_hash() for s in same] == [s.config.config_hash() for s in plan(recipe, only=["efficient", "cosine"])]


def test_an_override_error_names_only_planned_runs():
    recipe = load_recipe(ROOT / "recipes" / "default.yaml")
    too_short = (parse_override("schedule.epochs=1"),)   # below the recipe's 2 warmup epochs
    with pytest.raises(ConfigError, match="teacher 'teacher' with --set: .*warmup_epochs=2 exceeds schedule.epochs=1"):
        plan(recipe, overrides=too_short)
    with pytest.raises(ConfigError) as info:
        plan(recipe, overrides=too_short, only=["efficient"])
    assert "step 'efficient' with --set" in str(info.value) and "teacher" not in str(info.value)
    with pytest.raises(ConfigError, match="teacher 'teacher_mixup' with --set"):   # the one teacher distill_mixup needs
        plan(recipe, overrides=too_short, only=["distill_mixup"])


def test_the_command_line_error_names_the_step_of_only(tmp_path, capsys):
    recipe = str(ROOT / "recipes" / "default.yaml")
    assert main([recipe, "--set", "schedule.epochs=1", "--only", "efficient", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "model 'resnet18d', step 'efficient' with --set" in err and "teacher" not in err
    assert not (tmp_path / "out").exists()
