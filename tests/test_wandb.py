"""Weights & Biases: a tiny ablation logged offline and read back from its .wandb files (groups,
tags, nested configs, metrics, model lineage, the summary run), and its tables rebuilt from a
stand-in of `wandb.Api()` identical to those built from the run directories."""
from __future__ import annotations

import shutil
from pathlib import Path

import pandas as pd
import pytest
from wandb_files import FAST, StandInApi, offline_runs

from bench import report, runs
from bench.ablation import plan, run_ablation, tracking
from bench.cli import main
from bench.config import load_recipe, tricks_on
from bench.errors import BenchError, ConfigError
from bench.report.wandb import load_wandb_results, write_wandb_report
from bench.report.wandb_summary import delta_summary, log_report, summary_run_id
from bench.runs import RunDir


@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A tiny ablation (a teacher, efficient, distill) trained with W&B offline, and its report
    logged twice (the report run again)."""
    tmp = tmp_path_factory.mktemp("wandb")
    recipe = tmp / "recipe.yaml"
    from conftest import TINY_RECIPE
    recipe.write_text(TINY_RECIPE + "wandb: {project: bench-test, log_every_steps: 1}\n")
    out = tmp / "out"
    mp = pytest.MonkeyPatch()
    for var in ("WANDB_DIR", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_SWEEP_ID",
                "WANDB_RUN_ID"):
        mp.delenv(var, raising=False)
    mp.setenv("WANDB_MODE", "offline")
    loaded = load_recipe(recipe)
    specs = plan(loaded, only=["efficient", "distill"], overrides=FAST)
    run_ablation(specs, out, progress=False, wandb=loaded.wandb)
    report.write_report(out, figures=False)
    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=(1, 1))
    (out / "figures").mkdir()
    fig.savefig(out / "figures" / "curves.png")
    plt.close(fig)
    log_report(loaded.wandb, out)
    log_report(loaded.wandb, out)
    mp.undo()
    return out, specs, offline_runs(out)


def trained_runs(offline: list[dict]) -> dict[str, dict]:
    """The offline training runs by their run directory's path."""
    return {o["config"]["run"]["path"]: o for o in offline if o["job_type"] != "summary"}


def test_one_offline_run_per_training_run_with_group_tags_config_and_metrics(logged):
    out, specs, offline = logged
    by_path = trained_runs(offline)
    assert len(by_path) == len(specs) == 3 and set(by_path) == {str(s.path) for s in specs}
    for spec in specs:
        o = by_path[str(spec.path)]
        final = runs.read_json(out / spec.path / RunDir.FINAL)
        assert o["group"] == "out" and o["project"] == "bench-test"
        assert o["job_type"] == spec.role and o["name"] == f"{spec.model}/{spec.step}/seed{spec.seed}"
        assert o["id"] == (out / spec.path / RunDir.WANDB_ID).read_text().strip()
        assert o["config"]["run"]["step"] == spec.step and o["config"]["run"]["role"] == spec.role
        # nested sections, as config.yaml: W&B's filter config.schedule.kind is runs.csv's column
        assert o["config"]["schedule"]["kind"] == spec.config.schedule.kind
        assert o["config"]["optim"]["lr_per_256"] == spec.config.optim.lr_per_256
        assert {k: o["config"][k] for k in type(spec.config).model_fields} == spec.config.record()
        assert not [k for k in o["config"] if "." in k]
        assert o["summary"]["final"] == final and o["summary"]["top1"] == final["top1"]
        steps = spec.config.schedule.epochs * 2   # max_train_batches: 2
        batches = [h for h in o["history"] if "batch/train_loss" in h]
        assert [h["global_step"] for h in batches] == list(range(steps))
        assert all(h["batch/train_loss"] > 0 for h in batches)
        epochs = [h for h in o["history"] if "val_top1" in h]
        local = RunDir(out / spec.path).read_metrics()
        assert [h["val_top1"] for h in epochs] == [r["val_top1"] for r in local]
        assert [h["epoch"] for h in epochs] == [r["epoch"] for r in local]
    tags = {o["config"]["run"]["step"]: set(o["tags"]) for o in by_path.values()}
    assert tags["efficient"] == {"warmup", "zero_gamma", "no_bias_decay"}
    assert tags["distill"] == {"warmup", "zero_gamma", "no_bias_decay", "cosine", "label_smoothing", "distill"}
    assert tags["teacher"] == {"warmup", "zero_gamma", "no_bias_decay", "cosine"}
    cfg = specs[0].config
    bf16 = cfg.model_copy(update={"efficient": cfg.efficient.model_copy(update={"precision": "bf16"})})
    assert "bf16" in tricks_on(bf16)


def test_each_run_logs_its_weights_and_a_student_uses_its_teachers(logged):
    out, specs, offline = logged
    by_path = trained_runs(offline)
    teacher, efficient, distill = (next(s for s in specs if s.step == step) for step in ("teacher", "efficient", "distill"))
    logged_by = {}
    for spec in specs:
        (own,) = [a for a in by_path[str(spec.path)]["artifacts"] if not a["used"]]
        assert own["name"] == tracking.artifact_name("out", spec.path) and own["type"] == "model"
        assert own["files"] == [RunDir.WEIGHTS] and own["metadata"] == runs.read_json(out / spec.path / RunDir.FINAL)
        logged_by[spec.step] = own
    assert logged_by["teacher"]["name"] == "out-teachers-teacher-seed0"
    # the student's input is the teacher's artifact: the same name and digest, so the same version
    (used,) = [a for a in by_path[str(distill.path)]["artifacts"] if a["used"]]
    assert {k: used[k] for k in ("name", "digest", "metadata")} == {k: logged_by["teacher"][k] for k in ("name", "digest", "metadata")}
    assert distill.teacher_path == teacher.path
    assert not [a for a in by_path[str(efficient.path)]["artifacts"] if a["used"]]
    assert len({a["digest"] for a in logged_by.values()}) == 3


def test_the_summary_run_holds_the_tables_and_is_the_same_run_when_reported_again(logged):
    out, _, offline = logged
    first, second = [o for o in offline if o["job_type"] == "summary"]
    assert first["id"] == second["id"] == summary_run_id("out") and first["id"] != summary_run_id("other")
    assert second["group"] == "out" and second["name"] == "summary"
    logged_ = second["summary"]
    assert logged_["runs/_type"] == logged_["table/_type"] == logged_["deltas/_type"] == "table-file"
    assert logged_["runs/nrows"] == 3 and logged_["table/nrows"] == 2 and logged_["deltas/nrows"] == 2
    assert logged_["figures/curves/_type"] == "image-file"
    # distill builds on label_smoothing, which did not run: no pair, so no Δ (None is left out)
    assert logged_["delta/resnet18d/distill/parent_step"] == "label_smoothing"
    assert logged_["delta/resnet18d/distill/n_pairs"] == 0 and "delta/resnet18d/distill/delta_top1" not in logged_


def test_the_summary_holds_each_delta_with_its_interval():
    rows = [{"model": "m", "role": "student", "step": step, "parent_step": parent, "seed": seed, "top1": top1}
            for step, parent, tops in (("a", None, (70.0, 71.0, 72.0)), ("b", "a", (71.0, 71.5, 73.5)))
            for seed, top1 in enumerate(tops)]
    deltas = report.stats.staircase_deltas(pd.DataFrame(rows))
    summary = delta_summary(deltas)
    b = deltas.set_index("step").loc["b"]
    assert summary["m"]["b"] == {"parent_step": "a", "delta_top1": pytest.approx(1.0), "ci_low": pytest.approx(b["ci_low"]),
                                 "ci_high": pytest.approx(b["ci_high"]), "n_pairs": 3, "p": pytest.approx(b["p"]),
                                 "p_holm": pytest.approx(b["p"]), "detected": False}   # a family of one test
    assert summary["m"]["a"]["delta_top1"] is None and summary["m"]["a"]["parent_step"] is None


def test_tables_rebuilt_from_the_api_are_identical_to_the_local_ones(logged, tmp_path):
    out, _, offline = logged
    api = StandInApi(offline)
    remote = load_wandb_results("me/bench-test", "out", api=api)
    local = report.frames.load_results(out)
    assert api.queries == [("me/bench-test", {"group": "out"})]
    pd.testing.assert_frame_equal(remote.runs, local.runs)
    pd.testing.assert_frame_equal(remote.curves, local.curves)
    pd.testing.assert_frame_equal(remote.gaps, local.gaps)
    markdown = write_wandb_report("me/bench-test", "out", tmp_path / "from-wandb", api=api, figures=False)
    assert markdown == (out / "table.md").read_text()
    for name in ("runs.csv", "table.csv", "deltas.csv"):
        assert (tmp_path / "from-wandb" / name).read_text() == (out / name).read_text(), name


def test_report_with_wandb_logs_the_summary_of_a_results_directory(logged, tmp_path, monkeypatch):
    out = logged[0]
    copy = tmp_path / "ablation"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("wandb"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_DIR", "WANDB_SWEEP_ID", "WANDB_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    assert main(["report", str(copy), "--no-figures", "--wandb"]) == 0
    (summary,) = offline_runs(copy)
    assert summary["id"] == summary_run_id("ablation") and summary["summary"]["table/nrows"] == 2


def test_from_wandb_errors_are_one_line(logged, tmp_path, capsys):
    with pytest.raises(ConfigError, match="expected ENTITY/PROJECT"):
        load_wandb_results("bench-test", "out", api=StandInApi([]))
    with pytest.raises(BenchError, match="no finished runs in this group"):
        load_wandb_results("me/bench-test", "other", api=StandInApi(logged[2]))
    assert main(["report", "--group", "out"]) == 2
    assert "go together" in capsys.readouterr().err


def test_the_summary_holds_each_tricks_effects_and_the_cost_figure():
    from bench.report.wandb_summary import summary_data

    folder = Path(__file__).resolve().parent.parent / "results" / "default"
    data = summary_data(folder)
    effects = pd.read_csv(folder / "effects.csv")
    assert data["effects"].columns == list(effects.columns) and len(data["effects"].data) == len(effects)
    assert "figures/cost" in data
