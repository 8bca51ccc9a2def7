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
from bench.ablation.preview import CostModel, format_plan, plan_table, plan_totals, read_bench_json, table3_rates
from bench.cli import ROOT, main
from bench.config import ModelConfig, load_recipe
from bench.config.datasets import DATASETS
from bench.engine.models import build_model
from bench.report.frames import load_paper

RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))
TABLE6 = ROOT / "recipes" / "table6.yaml"


def _table6(**kwargs):
    return plan(load_recipe(TABLE6), where=str(TABLE6), **kwargs)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_plan_prints_every_run_and_totals_on_every_recipe(recipe, capsys):
    assert main(["plan", str(recipe), "--paper-times"]) == 0
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


def test_device_hours_from_a_bench_json_scaled_by_flops(tmp_path, write_recipe, capsys):
    settings = bm.BenchSettings(model="resnet18d", teacher="resnet18d", image_size=16, batch_size=4, num_classes=5,
                                warmup_steps=0, steps=1, rounds=1, precision="fp32", device="cpu", probe_s=0.05,
                                model_kwargs={"channels": [4, 8, 16, 32], "stem_width": 4},
                                teacher_kwargs={"channels": [4, 8, 16, 32], "stem_width": 4})
    measured = bm.run_benchmark(settings)
    bench_json = tmp_path / "bench.json"
    bench_json.write_text(json.dumps(measured))
    specs = plan(load_recipe(write_recipe(BENCH_RECIPE)))
    rate = read_bench_json(bench_json)
    table = plan_table(specs, [rate])
    rows = {row["run"]: row for row in table.to_dict("records")}
    plain, distill = measured["variants"]["plain"]["images_per_s"], measured["variants"]["distill"]["images_per_s"]
    images = 1_281_167 // 250 * 250 * 3
    # the measured model and pair: the measured rates, as they are
    assert rows["resnet18d/01-plain/seed0"]["device_hours"] == pytest.approx(images / plain / 3600)
    assert rows["resnet18d/02-distill/seed0"]["images_per_s"] == round(distill, 1)
    assert rows["teachers/same/seed0"]["images_per_s"] == round(plain, 1)
    # a wider model of the family: the rate × the FLOPs ratio; distilling from it adds a third of its time
    narrow, wide = (ModelConfig(name="resnet18d", kwargs={"channels": c, "stem_width": c[0]})
                    for c in ([4, 8, 16, 32], [8, 16, 32, 64]))
    counted = CostModel([])
    wide_rate = plain * counted.gflops(narrow, 16, 5) / counted.gflops(wide, 16, 1000)
    assert wide_rate < plain / 2
    assert rows["teachers/wider/seed0"]["images_per_s"] == round(wide_rate, 1)
    assert rows["resnet18d/03-distill_wider/seed0"]["images_per_s"] == round(1 / (1 / plain + 1 / (3 * wide_rate)), 1)
    assert "scaled by FLOPs" in rows["teachers/wider/seed0"]["rate_from"]
    assert rows["resnet18d/01-plain/seed0"]["rate_from"] == str(bench_json)
    # another precision, or a family nothing measured: no estimate, and the total says so
    other = plan_table(plan(load_recipe(write_recipe(BENCH_RECIPE.replace("precision: fp32", "precision: bf16")))), [rate])
    assert other["device_hours"].isna().all()
    assert "5 of 5 have none" in format_plan(other)
    assert main(["plan", str(write_recipe(BENCH_RECIPE)), "--bench", str(bench_json)]) == 0
    out = capsys.readouterr().out
    assert f"Total: 5 runs, {5 * images:,} training images" in out and "have none" not in out
    assert f"[1] {bench_json}" in out
    assert plan_totals(table)["device_hours"] == pytest.approx(table["device_hours"].sum())


def test_the_papers_table3_times_give_per_v100_rates_and_the_table6_cost():
    rates = {(r.model, r.precision): r.images_per_s for r in table3_rates(load_paper("table3"))}
    assert rates[("resnet50_v1", "fp16")] == pytest.approx(1_281_167 / (4.4 * 60 * 8))
    assert rates[("inception_v3", "fp32")] == pytest.approx(1_281_167 / (19.8 * 60 * 8))
    table = plan_table(_table6(), table3_rates(load_paper("table3")))
    assert table["device_hours"].notna().all()
    by_run = {row["run"]: row for row in table.to_dict("records")}
    efficient, distill = by_run["resnet50d/01-efficient/seed0"], by_run["resnet50d/04-distill/seed0"]
    teacher = by_run["teachers/resnet152d/seed0"]
    assert teacher["images_per_s"] < efficient["images_per_s"] / 2          # ResNet-152-D: 2.7x the FLOPs
    assert distill["images_per_s"] == pytest.approx(1 / (1 / efficient["images_per_s"] + 1 / (3 * teacher["images_per_s"])), rel=1e-3)
    # ResNet-50-D at the paper's "3 % slower" than ResNet-50, not at its FLOPs (12 %)
    assert efficient["images_per_s"] == pytest.approx(0.97 * rates[("resnet50_v1", "fp16")], rel=1e-3)   # shown to 0.1
    inception = by_run["inception_v3/01-efficient/seed0"]
    assert inception["images_per_s"] == pytest.approx(rates[("inception_v3", "fp16")], rel=1e-3)  # Table 3's own model
    # about 3,100 V100-hours when each model is charged for its own FLOPs and teacher (a flat
    # ResNet-50 rate for every run gives 1,736)
    total = plan_totals(table)["device_hours"]
    assert 3_000 < total < 3_500
    flat = table["train_images"].sum() / rates[("resnet50_v1", "fp16")] / 3600
    assert total > 1.7 * flat


def test_plan_refuses_a_bench_file_it_cannot_read(tmp_path, capsys):
    (tmp_path / "bad.json").write_text("{not json")
    for path in (tmp_path / "bad.json", tmp_path / "missing.json"):
        assert main(["plan", "--bench", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"error: --bench {path}:") and "\n" not in err


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
    table = plan_table(plan(load_recipe(write_recipe(recipe))))
    assert (table["train_images"] == 45_000 // 250 * 250 * 3).all()
