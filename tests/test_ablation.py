"""End to end: the CLI runs a smoke ablation, tabulates it, skips finished runs, fails cleanly."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import bench.ablation.execute as ablation_execute
import bench.engine.training as setup_mod
from bench.ablation import plan, run_ablation
from bench.cli import main
from bench.config import load_recipe
from bench.errors import BenchError
from bench.report import load_runs
from bench.runs import RunDir

from conftest import TINY_RECIPE, tiny_recipe

ROOT = Path(__file__).resolve().parent.parent


def test_default_recipe_smoke_end_to_end_through_the_cli(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "run_ablation.py", "--smoke", "--out", str(out), "--no-progress"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    df = pd.read_csv(out / "runs.csv")
    assert {"model", "role", "step", "step_index", "seed", "top1", "top5"} <= set(df.columns)
    assert sorted(df[df.role == "teacher"].step) == ["teacher", "teacher_mixup"]
    students = df[df.role == "student"].sort_values("step_index")
    assert list(students.step) == ["efficient", "cosine", "label_smoothing", "distill", "mixup", "distill_mixup"]
    assert students.top1.between(0, 100).all() and (students.top5 >= students.top1).all()
    table = (out / "table.md").read_text()
    for step in students.step:
        assert f"| {step} |" in table
    assert "| distill_mixup |" in proc.stdout  # the table is printed at the end
    for step_dir in (out / "resnet18d").iterdir():
        files = {p.name for p in (step_dir / "seed0").iterdir()}
        assert {"config.yaml", "env.json", "metrics.jsonl", "final.json", "last.pt"} <= files


def test_rerun_skips_finished_runs_and_resumes_partial_ones(write_recipe, tmp_path, monkeypatch):
    recipe = load_recipe(write_recipe())
    specs = plan(recipe, only=["efficient", "cosine"])
    out = tmp_path / "out"
    run_ablation(specs[:1], out, progress=False)
    first = (out / specs[0].path / RunDir.FINAL).read_text()

    trained = []
    real_train = ablation_execute.train
    monkeypatch.setattr(ablation_execute, "train", lambda cfg, run_dir, **kw: (trained.append(run_dir), real_train(cfg, run_dir, **kw))[1])
    lines = []
    run_ablation(specs, out, progress=False, echo=lines.append)
    assert [run.path for run in trained] == [out / specs[1].path]
    assert "finished, skipped" in lines[0]
    assert (out / specs[0].path / RunDir.FINAL).read_text() == first


def test_a_finished_run_of_another_config_is_never_overwritten(write_recipe, tmp_path):
    recipe = load_recipe(write_recipe())
    out = tmp_path / "out"
    specs = plan(recipe, only=["efficient"])
    run_ablation(specs, out, progress=False)
    before = (out / specs[0].path / RunDir.FINAL).read_bytes()
    from bench.config import parse_override
    changed = plan(recipe, only=["efficient"], overrides=(parse_override("optim.lr_per_256=0.2"),))
    with pytest.raises(BenchError, match=r"holds a run of another experiment \(here → expected: optim.lr_per_256: 0.4 → 0.2\)"):
        run_ablation(changed, out, progress=False)
    assert (out / specs[0].path / RunDir.FINAL).read_bytes() == before


def test_distillation_steps_train_their_teacher_first(write_recipe, tmp_path):
    out = tmp_path / "out"
    run_ablation(plan(load_recipe(write_recipe()), only=["distill"]), out, progress=False)
    df = load_runs(out)
    assert list(df.role) == ["teacher", "student"]
    assert df.loc[1, "teacher"] == "teachers/teacher/seed0" and df.loc[0, "model"] == "resnet26d"


@pytest.mark.parametrize("argv, fragment", [
    (["recipes/nope.yaml"], "recipe file not found"),
    (["--only", "warp"], "--only warp: no such step"),
    (["--set", "schedule.epoch=3"], "unknown key 'epoch'"),
    (["--set", "mixup.alpha=-1", "--smoke"], "mixup.alpha = -1"),
])
def test_bad_input_is_one_line_and_exit_2(argv, fragment, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    assert main([*argv, "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and fragment in err and "\n" not in err
    assert not (tmp_path / "o").exists()


def test_unwritable_results_directory(write_recipe, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert main([str(write_recipe()), "--smoke", "--out", str(blocker / "sub")]) == 2
    assert "not writable" in capsys.readouterr().err


def test_report_regenerates_tables_from_run_dirs(write_recipe, tmp_path, capsys):
    out = tmp_path / "out"
    run_ablation(plan(load_recipe(write_recipe()), only=["efficient", "cosine"], seeds=[0, 1]), out, progress=False)
    assert main(["report", str(out)]) == 0
    table = (out / "table.md").read_text()
    assert "| cosine |" in table and " ± " in table and "2 seeds" in table
    assert len(pd.read_csv(out / "runs.csv")) == 4


def test_a_teacher_given_as_a_checkpoint_is_loaded_not_trained(write_recipe, tmp_path, monkeypatch):
    import torch

    from bench.config import ModelConfig
    from bench.engine.models import build_model

    teacher_model = build_model(ModelConfig(name="resnet18d", small_input=True,
                                            kwargs={"channels": [8, 16, 32, 64], "stem_width": 8}), 10, 1)
    weights = tmp_path / "teacher.pt"
    torch.save(teacher_model.state_dict(), weights)
    recipe = load_recipe(write_recipe(tiny_recipe("given", {"schedule": {"kind": "cosine", "epochs": 1, "warmup_epochs": 0, "milestones": None}}, [
        {"name": "distill", "set": {"distill": {"teacher": "given", "temperature": 4}}}],
        teachers=[{"name": "given", "train": False, "set": {"model": {"checkpoint": str(weights)}}}])))
    specs = plan(recipe)
    assert [s.role for s in specs] == ["student"]           # no teacher run is planned
    seen = []
    real_load = setup_mod.load_teacher
    monkeypatch.setattr(setup_mod, "load_teacher", lambda *a: (seen.append(a), real_load(*a))[1])
    run_ablation(specs, tmp_path / "out", progress=False)
    teacher = real_load(*seen[0])
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in teacher_model.state_dict().items())
    assert load_runs(tmp_path / "out").loc[0, "teacher"] == str(weights)


def test_a_teacher_not_trained_needs_weights(write_recipe):
    from bench.errors import ConfigError

    path = write_recipe("""
        name: t
        teachers: [{name: big, train: false}]
        steps: [{name: a, set: {distill: {teacher: big}}}]
    """)
    with pytest.raises(ConfigError, match="teacher 'big': train: false needs model.checkpoint or model.pretrained"):
        load_recipe(path)


def test_the_committed_fashion_mnist_runs_are_finished_under_their_recipe():
    """The config hash is stable: every run in results/ still counts as finished for its recipe
    (adding a key or a trick section to the schema must not turn recorded runs into conflicts),
    its students with the teacher identity their final.json records."""
    recipe = load_recipe(ROOT / "recipes" / "fashion-mnist-table6-cpu.yaml")
    out = ROOT / "results" / "fashion_mnist_table6"
    specs = plan(recipe)
    assert len(specs) == (2 + 6) * 3   # two teachers and six steps, seeds 0-2
    for spec in specs:
        assert RunDir(out / spec.path).state(spec.config, spec.teacher_hash).name == "finished", spec.path


def test_the_committed_32_epoch_runs_are_whole_and_what_the_same_command_skips():
    """results/fashion_mnist_table6_32ep is trained seed by seed across sessions: every run
    directory committed is finished under the recipe as it is now (so the same command skips it),
    none is half-written, and each finished teacher's weights are there for its students."""
    recipe = load_recipe(ROOT / "recipes" / "fashion-mnist-table6-32ep.yaml")
    out = ROOT / "results" / "fashion_mnist_table6_32ep"
    specs = plan(recipe)
    assert len(specs) == (2 + 6) * 3
    planned = {str(s.path) for s in specs}
    committed = [p.parent.relative_to(out) for p in out.glob("**/config.yaml")]
    assert committed and all(str(p) in planned for p in committed), committed
    by_path = {s.path: s for s in specs}
    for path in committed:
        spec = by_path[path]
        assert RunDir(out / path).state(spec.config, spec.teacher_hash).name == "finished", path
        if spec.role == "teacher":
            assert (out / path / RunDir.WEIGHTS).is_file(), path


def test_a_results_folder_holds_one_recipes_runs(write_recipe, tmp_path, capsys):
    """A second recipe written into the same --out would take a step's Δ against the first
    recipe's parent run: refused before anything is written."""
    from bench.ablation.launch import merge_manifest
    out = tmp_path / "out"
    first = load_recipe(write_recipe())
    merge_manifest(plan(first), out, "local", first.name)
    manifest = (out / "launch.json").read_bytes()
    other = write_recipe(TINY_RECIPE.replace("name: tiny", "name: other"), "other.yaml")
    assert main([str(other), "--smoke", "--out", str(out), "--no-progress"]) == 2
    assert capsys.readouterr().err.strip() == (f"error: results directory {out}: holds the runs of recipe 'tiny', not "
                                               "'other' (a step's Δ would be taken against another recipe's run); "
                                               "give another --out")
    assert (out / "launch.json").read_bytes() == manifest and sorted(p.name for p in out.iterdir()) == ["launch.json"]
