"""`plan`: every run before it costs anything, with the paper's settings where the recipes say so,
and the recipe details that make Table 6 the paper's (models as in GluonCV, FP16, one teacher)."""
from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn

import bench.perf.throughput as bm
from bench.ablation import plan
from bench.ablation.preview import Throughput, plan_table, plan_totals, read_bench_json
from bench.cli import ROOT, main
from bench.config import load_recipe
from bench.config.datasets import DATASETS
from bench.engine.models import build_model
from bench.report.frames import load_paper

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
TABLE6 = ROOT / "recipes" / "table6.yaml"


def _table6(**kwargs):
    return plan(load_recipe(TABLE6), where=str(TABLE6), **kwargs)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_plan_prints_every_run_and_totals_on_every_recipe(recipe, capsys):
    assert main(["plan", str(recipe), "--images-per-s", "1000"]) == 0
    out = capsys.readouterr().out
    specs = plan(load_recipe(recipe), where=str(recipe))
    rows = [line for line in out.splitlines() if line.startswith("| ") and not line.startswith("| #")]
    assert [row.split(" | ")[1] for row in rows] == [s.label for s in specs]
    assert f"Total: {len(specs)} runs" in out and "device-hours" in out


def test_plan_writes_nothing(tmp_path, capsys):
    before = sorted(os.listdir(tmp_path))
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert main(["plan", str(ROOT / "recipes" / "default.yaml"), "--format", "csv"]) == 0
    finally:
        os.chdir(cwd)
    assert sorted(os.listdir(tmp_path)) == before


def test_table6_plan_has_the_papers_settings():
    table = plan_table(_table6())
    per_epoch = DATASETS["imagenet"].train_images // 1024 * 1024
    assert (table["global_batch"] == 1024).all() and (table["bn_batch"] == 128).all()
    assert (table["peak_lr"] == 0.4).all() and (table["warmup_epochs"] == 5).all()
    assert (table["precision"] == "fp16").all()
    mixed = table["mixing"] != "–"
    assert set(table.loc[mixed, "mixing"]) == {"mixup α=0.2"} and (table.loc[mixed, "epochs"] == 200).all()
    assert (table.loc[~mixed, "epochs"] == 120).all()
    assert (table["train_images"] == per_epoch * table["epochs"]).all()
    students = table[table["role"] == "student"]
    assert set(students.loc[students["run"].str.contains("01-efficient"), "schedule"]) == {"step 30/60/90"}
    smoothed = students[~students["run"].str.contains("01-efficient|02-cosine")]
    assert set(smoothed["smoothing"]) == {"paper ε=0.1"}
    distilled = students[students["teacher"] != "–"]
    assert len(distilled) == 6 and set(distilled["teacher"]) == {"resnet152d T=20", "resnet152d_mixup (resnet152d) T=20"}
    mixup = students[students["run"].str.contains("05-mixup")]
    assert (mixup["builds_on"] == "label_smoothing").all()
    assert (mixup["changes"] == 'mixup: off → {"alpha": 0.2, "off_epochs": 0}; schedule.epochs: 120 → 200').all()


BENCH_RECIPE = """
name: measured
base:
  model: {name: resnet18d, kwargs: {channels: [4, 8, 16, 32], stem_width: 4}}
  data: {dataset: imagenet, image_size: 16, global_batch_size: 250}
  schedule: {kind: cosine, epochs: 3}
  efficient: {precision: fp32}
teachers:
  - name: same
    set: {}
  - name: wider
    set: {model: {kwargs: {channels: [8, 16, 32, 64], stem_width: 8}}}
steps:
  - name: plain
  - name: distill
    set: {distill: {teacher: same, temperature: 20}}
  - name: distill_wider
    parent: plain
    set: {distill: {teacher: wider, temperature: 20}}
"""


def test_device_hours_from_a_given_rate_and_from_a_bench_json(tmp_path, write_recipe, capsys):
    settings = bm.BenchSettings(model="resnet18d", teacher="resnet18d", image_size=16, batch_size=4, num_classes=5,
                                warmup_steps=0, steps=1, rounds=1, precision="fp32", device="cpu", probe_s=0.05,
                                model_kwargs={"channels": [4, 8, 16, 32], "stem_width": 4},
                                teacher_kwargs={"channels": [4, 8, 16, 32], "stem_width": 4})
    measured = bm.run_benchmark(settings)
    bench_json = tmp_path / "bench.json"
    bench_json.write_text(json.dumps(measured))
    specs = plan(load_recipe(write_recipe(BENCH_RECIPE)))
    rates = {row["run"]: row for row in plan_table(specs, [read_bench_json(bench_json)]).to_dict("records")}
    plain, distill = measured["variants"]["plain"]["images_per_s"], measured["variants"]["distill"]["images_per_s"]
    images = 1_281_167 // 250 * 250 * 3
    assert rates["resnet18d/01-plain/seed0"]["device_hours"] == pytest.approx(images / round(plain, 1) / 3600, rel=1e-3)
    assert rates["resnet18d/02-distill/seed0"]["images_per_s"] == round(distill, 1)
    assert rates["teachers/same/seed0"]["images_per_s"] == round(plain, 1)
    for other in ("teachers/wider/seed0", "resnet18d/03-distill_wider/seed0"):   # another model, another teacher
        assert rates[other]["device_hours"] is None or rates[other]["device_hours"] != rates[other]["device_hours"]
    # a flat rate fills in the rest; the totals add up
    assert main(["plan", str(write_recipe(BENCH_RECIPE)), "--bench", str(bench_json), "--images-per-s", "100"]) == 0
    out = capsys.readouterr().out
    assert f"Total: 5 runs, {5 * images:,} training images" in out and "have none" not in out
    table = plan_table(specs, [Throughput(2500.0)])
    assert table["device_hours"].tolist() == pytest.approx((table["train_images"] / 2500.0 / 3600).tolist())
    assert plan_totals(table)["device_hours"] == pytest.approx(table["device_hours"].sum())


def test_plan_refuses_a_bench_file_it_cannot_read(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{not json")
    for path in (tmp_path / "bad.json", tmp_path / "missing.json"):
        assert main(["plan", "--bench", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: --bench {path}:") and "\n" not in err
    assert main(["plan", "--images-per-s", "0"]) == 2
    assert "--images-per-s 0: must be > 0" in capsys.readouterr().err


# ---- Table 6 as the paper's code builds it ---------------------------------------------------

def _built(model_column: str) -> nn.Module:
    spec = next(s for s in _table6(models=[model_column]) if s.role == "student" and s.step_index == 1)
    return build_model(spec.config.model, num_classes=1000)


def test_inception_v3_has_gluoncvs_dropout_before_the_classifier():
    model = _built("inception_v3")
    drops = [m for m in model.modules() if isinstance(m, nn.Dropout)]
    assert [d.p for d in drops] == [0.5]
    model.train()
    x = torch.randn(2, 3, 75, 75)
    with torch.no_grad():
        assert not torch.equal(model(x), model(x))   # dropout is on in training


def test_mobilenet_uses_relu_not_relu6():
    kinds = {type(m) for m in _built("mobilenet").modules()}
    assert nn.ReLU in kinds and nn.ReLU6 not in kinds


def test_every_table6_run_is_fp16_with_bn_over_128_images():
    specs = _table6()
    assert {(s.config.efficient.precision, s.config.efficient.bn_batch_size) for s in specs} == {("fp16", 128)}
    table5 = plan(load_recipe(ROOT / "recipes" / "table5.yaml"))
    t5 = next(s for s in table5 if s.model == "resnet50d")
    t6 = next(s for s in specs if s.model == "resnet50d" and s.step == "efficient")
    assert t5.config == t6.config   # Table 6's efficient ResNet-50-D is Table 5's ResNet-50-D


def test_one_teacher_resolution_for_every_column():
    full = {s.path: s.config for s in _table6() if s.role == "teacher"}
    alone = {s.path: s.config for s in _table6(models=["inception_v3"]) if s.role == "teacher"}
    assert alone == full and {c.data.image_size for c in full.values()} == {224}
    inception = [s for s in _table6(models=["inception_v3"]) if s.role == "student"]
    assert {s.config.data.image_size for s in inception} == {299}
    assert {s.teacher_path for s in inception if s.teacher_path} == set(full)


@pytest.mark.parametrize("recipe", [r for r in RECIPES if load_recipe(r).paper_table], ids=lambda p: p.name)
def test_every_student_has_its_paper_row(recipe):
    """Each (model column, step) of a recipe that names a paper table is compared with the paper's
    row of the model it stands in for (paper_models) at the step of the same name."""
    loaded = load_recipe(recipe)
    paper = load_paper(loaded.paper_table)
    rows = {(m, s) for m, s in zip(paper["model"], paper["step"])}
    students = {(s.paper_model, s.step) for s in plan(loaded, where=str(recipe)) if s.role == "student"}
    assert students <= rows, sorted(students - rows)


def test_the_plan_counts_the_training_images_left_after_a_holdout(write_recipe):
    recipe = BENCH_RECIPE.replace("dataset: imagenet, image_size: 16", "dataset: cifar10, holdout: 5000")
    table = plan_table(plan(load_recipe(write_recipe(recipe))), [Throughput(2500.0)])
    assert (table["train_images"] == 45_000 // 250 * 250 * 3).all()
