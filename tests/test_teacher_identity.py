"""A distilled student's identity includes its teacher's: a changed teacher config (or weights
file) makes its finished students runs of another config, with the usual one-line error."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from bench.ablation import plan, run_ablation
from bench.ablation.status import ablation_status
from bench.config import ModelConfig, load_recipe
from bench.engine.models import build_model
from bench.errors import BenchError, ConfigError
from bench.report import load_runs
from bench.runs import RunDir

from conftest import tiny_recipe

BASE = {"data": {"max_train_batches": 2}, "schedule": {"kind": "cosine", "epochs": 1, "warmup_epochs": 0, "milestones": None}}


def trained_recipe(eps: float) -> str:
    """A student of a teacher trained with label smoothing `eps`."""
    return tiny_recipe("trained", BASE, [{"name": "distill", "set": {"distill": {"teacher": "teacher", "temperature": 4}}}],
                       teachers=[{"name": "teacher", "set": {"label_smoothing": {"eps": eps}}}])


def given_recipe(path) -> str:
    """A student of a teacher given as the weights at `path`."""
    return tiny_recipe("given", BASE, [{"name": "distill", "set": {"distill": {"teacher": "given", "temperature": 4}}}],
                       teachers=[{"name": "given", "train": False, "set": {"model": {"checkpoint": str(path)}}}])
STUDENT = "resnet18d/01-distill/seed0"


@pytest.fixture
def trained(write_recipe, tmp_path):
    """A finished teacher and its student in tmp_path/out; returns (out, specs)."""
    specs = plan(load_recipe(write_recipe(trained_recipe(0.1))))
    run_ablation(specs, tmp_path / "out", progress=False)
    return tmp_path / "out", specs


def replan(write_recipe, eps: float):
    return plan(load_recipe(write_recipe(trained_recipe(eps))))


def test_the_teacher_identity_is_recorded_in_final_json_and_runs_csv(trained):
    out, (teacher, student) = trained
    assert student.teacher_hash == teacher.config.config_hash()
    assert RunDir(out / STUDENT).read_final()["teacher_hash"] == teacher.config.config_hash()
    assert RunDir(out / teacher.path).read_final()["teacher_hash"] is None
    runs = load_runs(out).set_index("path")
    assert runs.loc[STUDENT, "teacher_hash"] == teacher.config.config_hash()
    assert list(runs.columns).index("teacher_hash") == list(runs.columns).index("teacher") + 1
    assert [RunDir(out / s.path).state(s.config, s.teacher_hash).name for s in (teacher, student)] == ["finished"] * 2


def test_a_changed_teacher_config_makes_its_students_another_config(trained, write_recipe):
    out, (old_teacher, _) = trained
    teacher, student = replan(write_recipe, 0.2)
    assert student.config == trained[1][1].config            # the student's own config is the same
    assert RunDir(out / student.path).state(student.config, student.teacher_hash).name == "conflict"
    shutil.move(out / "teachers", out.parent / "old-teachers")   # the old teacher moved away, as the error asks
    with pytest.raises(BenchError) as err:
        run_ablation([teacher, student], out, progress=False)
    assert str(err.value) == (f"{out / STUDENT}: holds a run of another experiment (its teacher differs: its final.json "
                              f"names {old_teacher.config.config_hash()}, expected {teacher.config.config_hash()}); "
                              "choose another --out or move it away")
    assert not (out / "teachers").exists()   # stopped before anything trained


def test_an_unfinished_student_of_another_teacher_is_not_resumed(trained, write_recipe):
    out, _ = trained
    (out / STUDENT / RunDir.FINAL).unlink()   # as if killed after its last checkpoint
    _, student = trained[1]
    assert RunDir(out / STUDENT).state(student.config, student.teacher_hash).name == "partial"
    _, changed = replan(write_recipe, 0.2)
    with pytest.raises(BenchError, match=r"holds a run of another experiment \(its teacher differs: its teacher.json names .*\); choose another"):
        RunDir(out / STUDENT).check(changed.config, changed.teacher_hash)


def test_a_changed_weights_file_makes_its_students_another_config(write_recipe, tmp_path):
    weights = tmp_path / "teacher.pt"
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="resnet18d", small_input=True, kwargs={"channels": [8, 16, 32, 64], "stem_width": 8}), 10, 1)
    torch.save(model.state_dict(), weights)
    recipe = write_recipe(given_recipe(weights))
    (student,) = plan(load_recipe(recipe))
    out = tmp_path / "out"
    run_ablation([student], out, progress=False)
    assert RunDir(out / STUDENT).read_final()["teacher_hash"] == student.teacher_hash

    moved = tmp_path / "elsewhere.pt"   # the same bytes under another name: the same teacher
    shutil.copy(weights, moved)
    (same,) = plan(load_recipe(write_recipe(given_recipe(moved), "moved.yaml")))
    assert same.teacher_hash == student.teacher_hash

    with torch.no_grad():
        next(model.parameters()).add_(1.0)
    torch.save(model.state_dict(), weights)   # other weights under the same name: another teacher
    (changed,) = plan(load_recipe(recipe))
    assert changed.teacher_hash != student.teacher_hash
    assert RunDir(out / STUDENT).state(changed.config, changed.teacher_hash).name == "conflict"
    with pytest.raises(BenchError, match=r"^.*01-distill/seed0: holds a run of another experiment \(its teacher differs: "
                                         r"its final.json names \w{12}, expected \w{12}\); choose another --out or move it away$"):
        run_ablation([changed], out, progress=False)


def test_a_given_teacher_file_that_is_missing_stops_the_plan(write_recipe, tmp_path):
    with pytest.raises(ConfigError, match=r"teacher 'given': model.checkpoint = .*nope.pt: no such file$"):
        plan(load_recipe(write_recipe(given_recipe(tmp_path / "nope.pt"))))


def test_a_student_whose_final_json_names_no_teacher_is_not_current(trained):
    out, specs = trained
    final = RunDir(out / STUDENT).read_final()
    del final["teacher_hash"]
    (out / STUDENT / RunDir.FINAL).write_text(json.dumps(final, indent=2, sort_keys=True) + "\n")
    student = specs[1]
    with pytest.raises(BenchError, match=r"holds a run of another experiment \(its teacher differs: its final.json names None, "
                                         r"expected \w{12}\); choose another"):
        RunDir(out / STUDENT).check(student.config, student.teacher_hash)
    assert ablation_status(out)[1]["state"] == "failed"


def test_status_finds_a_student_of_another_teacher(trained):
    out, _ = trained
    assert [r["state"] for r in ablation_status(out)] == ["finished", "finished"]
    final = RunDir(out / STUDENT).read_final()
    (out / STUDENT / RunDir.FINAL).write_text(json.dumps({**final, "teacher_hash": "0" * 12}))
    row = ablation_status(out)[1]
    assert row["state"] == "failed"
    assert row["detail"].startswith("holds a run of another experiment (its teacher differs: its final.json names 000000000000, expected ")
