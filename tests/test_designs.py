"""Designs beyond the staircase (leave-one-out, add-one, factorial) from one recipe's steps, runs
that designs share trained once, and each trick's effect per design, checked by hand and against
synthetic runs with a known effect."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from bench.ablation import plan, run_ablation
from bench.ablation.designs import design_cells
from bench.cli import main
from bench.config import load_recipe
from bench.errors import ConfigError
from bench.report import write_report
from bench.report.effects import trick_effects
from bench.runs import RunDir

from conftest import tiny_recipe

STEPS = [{"name": "efficient"}, {"name": "cosine", "set": {"schedule": {"kind": "cosine"}}},
         {"name": "label_smoothing", "set": {"label_smoothing": {"eps": 0.1}}},
         {"name": "mixup", "set": {"mixup": {"alpha": 0.2}}}]


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text(tiny_recipe(steps=STEPS))
    return load_recipe(path)


def stacks(recipe, design, tricks=None):
    return [(c.name, "+".join(c.stack)) for c in design_cells(recipe, design, tricks)]


def test_each_design_runs_its_sets_of_tricks_and_shares_the_staircases_runs(recipe):
    assert stacks(recipe, "add-one") == [
        ("efficient", "efficient"), ("cosine", "efficient+cosine"),
        ("efficient+label_smoothing", "efficient+label_smoothing"), ("efficient+mixup", "efficient+mixup")]
    assert stacks(recipe, "leave-one-out") == [
        ("mixup", "efficient+cosine+label_smoothing+mixup"),
        ("efficient+label_smoothing+mixup", "efficient+label_smoothing+mixup"),
        ("efficient+cosine+mixup", "efficient+cosine+mixup"),
        ("label_smoothing", "efficient+cosine+label_smoothing")]
    factorial = stacks(recipe, "factorial", ["mixup", "cosine"])   # recipe order, whatever the order given
    assert factorial == [("efficient", "efficient"), ("cosine", "efficient+cosine"), ("efficient+mixup", "efficient+mixup"),
                         ("efficient+cosine+mixup", "efficient+cosine+mixup")]
    assert len(design_cells(recipe, "factorial")) == 2 ** 3


def test_a_run_two_designs_share_has_one_path_and_one_config(recipe):
    specs = {d: {s.path: s for s in plan(recipe, design=d, seeds=[0])} for d in ("staircase", "add-one", "leave-one-out")}
    assert {str(p) for p in set(specs["staircase"]) & set(specs["add-one"])} == {
        "resnet18d/01-efficient/seed0", "resnet18d/02-cosine/seed0"}
    assert {str(p) for p in set(specs["staircase"]) & set(specs["leave-one-out"])} == {
        "resnet18d/03-label_smoothing/seed0", "resnet18d/04-mixup/seed0"}
    for a, b in (("staircase", "add-one"), ("staircase", "leave-one-out"), ("add-one", "leave-one-out")):
        for path in set(specs[a]) & set(specs[b]):
            assert specs[a][path].config.config_hash() == specs[b][path].config.config_hash()
            assert specs[a][path].record() == specs[b][path].record()
    # a design's own run has the config of the baseline with the trick's own `set:` and nothing else
    alone = specs["add-one"][next(p for p in specs["add-one"] if "efficient+mixup" in str(p))]
    base = specs["staircase"][next(p for p in specs["staircase"] if "01-efficient" in str(p))]
    assert alone.config.differences(base.config) == ['mixup: off → {"alpha": 0.2, "off_epochs": 0}']
    assert alone.role == "design" and alone.stack == "efficient+mixup" and alone.parent_step == "efficient"


def test_designs_refuse_what_they_cannot_run(recipe, write_recipe, capsys):
    with pytest.raises(ConfigError, match="--tricks warp: not a trick of recipe"):
        design_cells(recipe, "factorial", ["warp"])
    with pytest.raises(ConfigError, match="--tricks efficient: not a trick"):   # the baseline is no trick
        design_cells(recipe, "add-one", ["efficient"])
    with pytest.raises(ConfigError, match="the staircase runs the recipe's steps as written"):
        design_cells(recipe, "staircase", ["cosine"])
    assert main(["plan", str(write_recipe()), "--design", "add-one", "--only", "cosine"]) == 2
    assert capsys.readouterr().err.strip() == ("error: --only picks steps of the staircase; with --design add-one, "
                                               "--tricks chooses the runs")


def test_the_recipe_chooses_its_design_and_the_command_line_overrides_it(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(tiny_recipe(steps=STEPS) + "design: add-one\ntricks: [mixup]\n")
    assert [s.stack for s in plan(load_recipe(path))] == ["efficient", "efficient+mixup"]
    assert main(["plan", str(path), "--design", "factorial", "--tricks", "cosine", "mixup", "--format", "csv"]) == 0
    rows = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out))
    assert rows["run"].tolist()[:-1] == ["resnet18d/01-efficient/seed0", "resnet18d/02-cosine/seed0",
                                         "resnet18d/efficient+mixup/seed0", "resnet18d/efficient+cosine+mixup/seed0"]


def runs_frame(values: dict[str, list[float]], model: str = "m", val_images: int = 10_000) -> pd.DataFrame:
    """A runs DataFrame of students with the given top-1 per seed for each stack (the staircase
    steps: efficient → cosine → label_smoothing, where those stacks are given)."""
    steps = {"efficient": ("efficient", None, 1), "efficient+cosine": ("cosine", "efficient", 2),
             "efficient+cosine+label_smoothing": ("label_smoothing", "cosine", 3)}
    rows = []
    for stack, tops in values.items():
        step, parent, index = steps.get(stack, (stack, "efficient", 0))
        for seed, top1 in enumerate(tops):
            rows.append({"model": model, "role": "student" if index else "design", "step": step, "step_index": index,
                         "parent_step": parent, "seed": seed, "top1": top1, "val_images": val_images, "stack": stack,
                         "train_time_s": 60.0, "path": f"{model}/{step}/seed{seed}", "teacher": None})
    return pd.DataFrame(rows)


def test_a_factorial_by_hand():
    """2^2 over cosine and label smoothing, two seeds. Seed 0: (1) 90, c 91, ls 90.5, c+ls 92 →
    cosine (91 − 90 + 92 − 90.5)/2 = 1.25, ls (90.5 − 90 + 92 − 91)/2 = 0.75, c×ls (92 − 90.5 − 91 + 90)/2 = 0.25.
    Seed 1: every top-1 0.5 higher but c+ls 1 higher → cosine 1.5, ls 1.0, c×ls 0.5."""
    runs = runs_frame({"efficient": [90, 90.5], "efficient+cosine": [91, 91.5],
                       "efficient+label_smoothing": [90.5, 91], "efficient+cosine+label_smoothing": [92, 93]})
    fx = trick_effects(runs).set_index(["design", "effect"])
    assert fx.loc[("factorial", "cosine"), "delta_top1"] == pytest.approx((1.25 + 1.5) / 2)
    assert fx.loc[("factorial", "label_smoothing"), "delta_top1"] == pytest.approx((0.75 + 1.0) / 2)
    assert fx.loc[("factorial", "cosine × label_smoothing"), "delta_top1"] == pytest.approx((0.25 + 0.5) / 2)
    assert fx.loc[("staircase", "cosine"), "delta_top1"] == pytest.approx(1.0)
    assert fx.loc[("staircase", "cosine"), "also"] == "add-one"   # the same contrast: one row
    assert fx.loc[("staircase", "label_smoothing"), "delta_top1"] == pytest.approx((1.0 + 1.5) / 2)
    assert fx.loc[("leave-one-out", "cosine"), "delta_top1"] == pytest.approx((1.5 + 2.0) / 2)
    # two seeds: the 95 % t-interval of the cosine main effect, by hand (t.ppf(0.975, 1) = 12.706)
    d = np.array([1.25, 1.5])
    half = 12.7062047 * d.std(ddof=1) / math.sqrt(2)
    assert fx.loc[("factorial", "cosine"), "ci_low"] == pytest.approx(d.mean() - half, abs=1e-6)
    # the family: Holm over the 7 distinct contrasts (cosine's staircase step is its add-one)
    assert len(fx) == 7
    p = fx["p"].sort_values()
    assert fx.loc[p.index[0], "p_holm"] == pytest.approx(min(1, 7 * p.iloc[0]))
    assert fx.loc[p.index[1], "p_holm"] == pytest.approx(max(min(1, 7 * p.iloc[0]), min(1, 6 * p.iloc[1])))


def synthetic(effect: float, seeds: int, rng: np.random.Generator, sd: float = 0.2) -> pd.DataFrame:
    """An add-one design: baseline and baseline+cosine, per seed a shared seed level plus noise."""
    level = rng.normal(90, 0.3, seeds)
    return runs_frame({"efficient": level + rng.normal(0, sd / math.sqrt(2), seeds),
                       "efficient+cosine": level + effect + rng.normal(0, sd / math.sqrt(2), seeds)})


def test_synthetic_runs_find_a_true_effect_and_not_a_null_one_at_the_stated_rate():
    """20 seeds, a per-seed contrast with std 0.2: a true Δ of 0.3 is found (power ≈ 1), a true 0 is
    'found' in about 5 % of 400 repetitions."""
    rng = np.random.default_rng(0)
    found = trick_effects(synthetic(0.3, 20, rng)).set_index(["design", "effect"]).loc[("staircase", "cosine")]
    assert found["ci_low"] > 0 and found["p"] < 0.001 and found["detected"] and found["mde"] < 0.3
    false = 0
    for _ in range(400):
        row = trick_effects(synthetic(0.0, 20, rng)).set_index(["design", "effect"]).loc[("staircase", "cosine")]
        false += row["ci_low"] > 0 or row["ci_high"] < 0
    assert 0.02 <= false / 400 <= 0.085


def test_runs_without_their_tricks_recorded_give_no_effects():
    assert trick_effects(runs_frame({"efficient": [90, 91]}).drop(columns="stack")).empty


def test_designs_train_a_shared_run_once_and_the_report_writes_each_tricks_effects(write_recipe, tmp_path):
    recipe = load_recipe(write_recipe())
    out = tmp_path / "out"
    run_ablation(plan(recipe, seeds=[0, 1], only=["efficient", "cosine"], smoke=True), out, progress=False,
                 echo=lambda _: None)
    trained = {p: p.stat().st_mtime_ns for p in out.glob("**/final.json")}
    lines = []
    run_ablation(plan(recipe, seeds=[0, 1], design="add-one", tricks=["cosine", "mixup"], smoke=True), out,
                 progress=False, echo=lines.append)
    assert sum("finished, skipped" in line for line in lines) == 4          # baseline and cosine, both seeds
    assert all(p.stat().st_mtime_ns == t for p, t in trained.items())
    assert json.loads((out / "resnet18d" / "efficient+mixup" / "seed1" / RunDir.FINAL).read_text())["stack"] == "efficient+mixup"
    write_report(out)
    effects = pd.read_csv(out / "effects.csv")
    # no factorial (efficient+cosine+mixup was not run), no leave-one-out (no single fullest stack)
    assert list(zip(effects["design"], effects["effect"])) == [("staircase", "cosine"), ("add-one", "mixup")]
    assert effects["also"].fillna("").tolist() == ["add-one", ""]   # the same contrast, computed and shown once
    assert "| add-one | mixup | 2 |" in (out / "effects.md").read_text()
    assert (out / "figures" / "cost.png").stat().st_size > 10_000
    table = (out / "table.md").read_text()
    assert "efficient+mixup" not in table   # the staircase table holds the staircase's steps only


def test_device_time_charges_a_distilling_run_its_share_of_its_teacher():
    from bench.report.contrasts import device_hours
    from bench.report.effects import pareto_front

    runs = pd.DataFrame([
        {"role": "teacher", "path": "teachers/t/seed0", "teacher": None, "train_time_s": 7200.0, "world_size": 2},
        {"role": "student", "path": "a", "teacher": "teachers/t/seed0", "train_time_s": 3600.0, "world_size": 1},
        {"role": "design", "path": "b", "teacher": "teachers/t/seed0", "train_time_s": 1800.0, "world_size": 4},
        {"role": "student", "path": "c", "teacher": None, "train_time_s": 3600.0, "world_size": None}])
    # the teacher: 2 h on 2 devices = 4 device-hours, half to each of its two pupils
    hours, basis = device_hours(runs)
    assert hours.tolist() == pytest.approx([4.0, 1.0 + 2.0, 2.0 + 2.0, 1.0])
    assert basis.tolist() == ["wall clock"] * 4   # recorded before device_time_s
    runs["device_time_s"], runs["device_time_from"] = [None, 1800.0, None, None], [None, "cpu time", None, None]
    hours, basis = device_hours(runs)
    assert hours.tolist() == pytest.approx([4.0, 0.5 + 2.0, 2.0 + 2.0, 1.0]) and basis[1] == "cpu time"
    points = pd.DataFrame({"stack": list("abcd"), "device_h": [1.0, 2.0, 2.0, 3.0], "top1": [90.0, 89.0, 91.0, 90.5]})
    assert pareto_front(points)["stack"].tolist() == ["a", "c"]


def test_each_tricks_cost_and_its_gain_per_device_hour():
    """Mixup trains 5/3 as long: its add-one effect costs the difference, and its Δ per device-hour
    is its Δ over that; cosine's cost is within timing noise (its interval holds 0): no such ratio."""
    runs = runs_frame({"efficient": [90.0, 90.2], "efficient+cosine": [90.5, 90.6], "efficient+mixup": [91.0, 91.4]})
    runs["train_time_s"] = runs["stack"].map({"efficient": 3600.0, "efficient+cosine": 3610.0, "efficient+mixup": 6000.0})
    runs.loc[(runs["stack"] == "efficient+cosine") & (runs["seed"] == 1), "train_time_s"] = 3590.0   # timing noise
    fx = trick_effects(runs).set_index(["design", "effect"])
    assert fx.loc[("add-one", "mixup"), "extra_device_h"] == pytest.approx(2400 / 3600)
    assert fx.loc[("add-one", "mixup"), "delta_per_device_h"] == pytest.approx(1.1 / (2400 / 3600))
    assert math.isnan(fx.loc[("staircase", "cosine"), "delta_per_device_h"])


def test_leave_one_out_is_read_around_the_stack_with_the_most_leave_one_outs():
    """A leave-one-out over cosine, label smoothing and mixup beside a staircase whose last step adds
    distillation: the full stack is cosine+label_smoothing+mixup (three of its leave-one-outs are
    there), not the larger stack with distillation (one)."""
    tops = {"efficient": [90, 90], "efficient+cosine+label_smoothing+mixup": [92, 93],
            "efficient+label_smoothing+mixup": [91, 91], "efficient+cosine+mixup": [91.5, 92.5],
            "efficient+cosine+label_smoothing": [91.75, 92.25],
            "efficient+cosine+label_smoothing+mixup+distill": [93, 93]}
    fx = trick_effects(runs_frame(tops)).set_index(["design", "effect"])
    loo = fx.loc["leave-one-out", "delta_top1"]
    assert loo.to_dict() == pytest.approx({"cosine": 1.5, "label_smoothing": 0.5, "mixup": 0.5})


def test_power_where_scipys_noncentral_t_gives_nan():
    """scipy's nct gives NaN far in its lower tail (1 degree of freedom, nc ≈ 12.64 here), where
    P(T < −crit) ≤ P(Z < −nc) is below 1e-14: the power is the upper tail alone, as the
    definition T = (Z + nc)/√(V/dof), integrated over V ~ χ²(dof), gives; the MDE of 2 seeds is a number."""
    from scipy import integrate
    from scipy import stats as scipy_stats

    from bench.report.power import detectable_delta, paired_power

    sd, delta = 7.287730056797286, 65.15519014070587
    crit, nc = scipy_stats.t.ppf(0.975, 1), delta * math.sqrt(2) / sd
    assert math.isnan(scipy_stats.nct.cdf(-crit, 1, nc))
    by_definition = integrate.quad(lambda v: (scipy_stats.norm.sf(crit * math.sqrt(v) - nc)
                                              + scipy_stats.norm.cdf(-crit * math.sqrt(v) - nc)) * scipy_stats.chi2.pdf(v, 1),
                                   0, math.inf)[0]
    assert paired_power(delta, sd, 2) == pytest.approx(by_definition, abs=1e-9)
    assert paired_power(detectable_delta(2, sd), sd, 2) == pytest.approx(0.8, abs=1e-6)
