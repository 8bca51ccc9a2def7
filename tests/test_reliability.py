"""Killed at any moment it resumes exactly; a NaN stops one run; two processes never share a run."""
from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import bench.engine as engine
import bench.engine.step as step_mod
from bench import runs
from bench.ablation import plan, run_ablation
from bench.cli import main
from bench.config import RunConfig, load_recipe
from bench.engine.guard import NonFiniteLoss
from bench.report import load_runs
from bench.runs import RunDir, RunLock, files

ROOT = Path(__file__).resolve().parent.parent
UNTIMED = lambda row: {k: v for k, v in row.items() if not k.endswith("_s")}


@pytest.mark.slow
def test_sigkill_at_any_point_resumes_to_the_same_metrics_and_weights(tmp_path):
    kills = [["batch", 5], ["ckpt", 1], ["eval", 2], ["external", 3], ["weights", 1], [None, 0]]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    lines = []
    for run, attempts in (("cut", kills), ("full", [[None, 0]])):
        proc = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_driver.py"), str(tmp_path / run),
                               json.dumps(attempts)], capture_output=True, text=True, timeout=400, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines += [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]   # not the run's messages
    cut = lines[:len(kills)]
    assert [a["signal"] for a in cut] == [signal.SIGKILL] * 5 + [None]
    batch, ckpt, evaluation, external, weights, _ = cut
    assert batch["checkpoint_epoch"] == 0                          # killed in epoch 1
    assert ckpt["checkpoint_epoch"] == 0 and ckpt["tmp_files"]     # half a file left, never loaded
    assert evaluation["checkpoint_epoch"] == 1                     # killed evaluating epoch 2
    assert weights["checkpoint_epoch"] == 3                        # killed writing model.pt
    a, b = (runs.read_json(tmp_path / run / "result.json") for run in ("cut", "full"))
    assert UNTIMED(a) == UNTIMED(b)
    assert (tmp_path / "cut" / RunDir.WEIGHTS).read_bytes() == (tmp_path / "full" / RunDir.WEIGHTS).read_bytes()
    rows = lambda run: [UNTIMED(r) for r in RunDir(tmp_path / run).read_metrics()]
    assert rows("cut") == rows("full") and [r["epoch"] for r in rows("cut")] == [0, 1, 2, 3]


class Stop(Exception):
    pass


def test_resume_restores_every_generator_and_the_data_order(tiny_cfg, tmp_path, monkeypatch):
    """A component drawing from Python's and NumPy's global generators and torch's (dropout)
    sees, after a resume, exactly the numbers an uninterrupted run sees."""
    cfg = RunConfig.model_validate({**tiny_cfg.model_dump(), "mixup": {"alpha": 0.2}})
    real_loss, seen = step_mod.training_loss, []

    def drawing_loss(model, images, labels, *args, **kwargs):
        seen.append((random.random(), float(np.random.random()), float(torch.rand(())), labels.tolist()))
        return real_loss(model, images, labels, *args, **kwargs)
    monkeypatch.setattr(step_mod, "training_loss", drawing_loss)
    engine.train(cfg, tmp_path / "full", progress=False)
    full, seen[:] = list(seen), []

    real_save = files.save_torch
    def save_then_stop(path, obj):
        real_save(path, obj)
        if path.name == RunDir.CHECKPOINT and obj["epoch"] == 0:
            raise Stop
    monkeypatch.setattr(files, "save_torch", save_then_stop)
    with pytest.raises(Stop):
        engine.train(cfg, tmp_path / "cut", progress=False)
    monkeypatch.setattr(files, "save_torch", real_save)
    random.seed(99), np.random.seed(99), torch.manual_seed(99)   # a fresh process's generators differ
    seen[:] = []
    engine.train(cfg, tmp_path / "cut", progress=False)
    assert seen == full[3:]   # epochs 1 and 2: the same draws and the same batches


def nan_at(monkeypatch, call: int = 0, model: str = ""):
    """Make the training loss NaN from the `call`-th call on (or for every run of `model`)."""
    real_loss, calls = step_mod.training_loss, [0]

    def loss(model_, images, labels, cfg, *args, **kwargs):
        calls[0] += 1
        out = real_loss(model_, images, labels, cfg, *args, **kwargs)
        bad = cfg.model.name == model if model else calls[0] >= call
        return out * float("nan") if bad else out
    monkeypatch.setattr(step_mod, "training_loss", loss)


def test_a_nan_loss_stops_the_run_at_its_step_and_keeps_the_last_good_checkpoint(tiny_cfg, tmp_path, monkeypatch):
    nan_at(monkeypatch, call=5)   # epoch 1, batch 2 = global step 4
    with pytest.raises(NonFiniteLoss, match=r"loss became nan at step 4 \(epoch 1, batch 2 of 3\).*last.pt \(epoch 0\)") as err:
        engine.train(tiny_cfg, tmp_path, progress=False)
    assert err.value.step == 4 and err.value.epoch == 1
    assert runs.load_torch(tmp_path / RunDir.CHECKPOINT)["epoch"] == 0
    assert [r["epoch"] for r in RunDir(tmp_path).read_metrics()] == [0]
    assert not (tmp_path / RunDir.WEIGHTS).exists()


def test_a_failed_teacher_skips_its_students_and_the_others_go_on(write_recipe, tmp_path, monkeypatch, capsys):
    nan_at(monkeypatch, model="resnet26d")   # the teacher diverges
    out = tmp_path / "o"
    code = main([str(write_recipe()), "--only", "efficient", "distill", "--out", str(out), "--no-progress"])
    captured = capsys.readouterr()
    assert code == 1
    error = captured.err.strip().splitlines()
    assert len(error) == 1 and re.match(r"error: 2 runs did not finish: teachers/teacher/seed0: loss became nan at step 0", error[0])
    assert "resnet18d/04-distill/seed0: its teacher teachers/teacher/seed0 failed" in error[0]
    failed = runs.read_json(out / "teachers" / "teacher" / "seed0" / RunDir.FAILED)
    assert failed["step"] == 0 and failed["loss"] == "nan"
    df = load_runs(out)
    assert list(df.step) == ["efficient"]   # no final.json, no row
    assert not (out / "resnet18d" / "04-distill").exists()

    stop = tmp_path / "stop"
    assert main([str(write_recipe()), "--only", "efficient", "distill", "--out", str(stop), "--no-progress",
                 "--on-failure", "stop"]) == 1
    assert not (stop / "resnet18d").exists()   # stopped at the teacher


def test_a_run_locked_by_another_process_is_skipped_and_said_so(write_recipe, tmp_path):
    specs = plan(load_recipe(write_recipe()), only=["efficient", "cosine"])
    out = tmp_path / "o"
    lock = RunLock(out, specs[0].path)
    holder = subprocess.Popen([sys.executable, "-c", (
        "import fcntl, os, sys, time; p = sys.argv[1]; os.makedirs(os.path.dirname(p), exist_ok=True); "
        "f = open(p, 'w'); fcntl.flock(f, fcntl.LOCK_EX); f.write(f'pid {os.getpid()} on elsewhere'); f.flush(); "
        "print('locked', flush=True); time.sleep(600)"), str(lock.path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        lines = []
        run_ablation(specs, out, progress=False, echo=lines.append)
        assert re.match(rf"\[1/2\] {specs[0].path}: skipped, locked by pid {holder.pid} on elsewhere", lines[0])
        assert not (out / specs[0].path).exists() and (out / specs[1].path / RunDir.FINAL).exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert lock.try_acquire()   # a killed holder leaves no stale lock
    lock.release()


def test_stale_temporary_files_are_removed_and_never_loaded(tiny_cfg, write_recipe, tmp_path):
    specs = plan(load_recipe(write_recipe()), only=["efficient"])
    out = tmp_path / "o"
    run_dir = out / specs[0].path
    run_dir.mkdir(parents=True)
    (run_dir / ".last.pt.abc123.tmp").write_bytes(b"PK half a checkpoint")
    run_ablation(specs, out, progress=False, echo=lambda _: None)
    assert not list(run_dir.glob(".*.tmp")) and (run_dir / RunDir.FINAL).exists()


def test_a_row_cut_short_by_a_kill_is_not_read(tmp_path):
    rd, path = RunDir(tmp_path), tmp_path / RunDir.METRICS
    rd.append_metrics({"epoch": 0, "train_loss": 1.0})
    with open(path, "a") as f:
        f.write('{"epoch": 1, "train_lo')
    assert rd.read_metrics() == [{"epoch": 0, "train_loss": 1.0}]
    rd.truncate_metrics(1)
    assert path.read_text().endswith("}\n")


def test_checkpoints_and_yaml_are_loaded_safely():
    sources = {p: p.read_text() for p in (ROOT / "bench").rglob("*.py")}
    loads = [f"{p.name}: {line.strip()}" for p, text in sources.items() for line in text.splitlines()
             if "torch.load(" in line and "weights_only=True" not in line]
    assert not loads
    assert not [p.name for p, text in sources.items() if re.search(r"yaml\.(load|unsafe_load|full_load)\(", text)]


def test_a_secret_never_reaches_a_config(write_recipe, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_API_KEY", "s3cret-value-0123456789")
    recipe = write_recipe(open(write_recipe()).read().replace("data: {dataset: digits,", "data: {dataset: digits, root: '${oc.env:WANDB_API_KEY}',"))
    assert main([str(recipe), "--smoke", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "holds the value of $WANDB_API_KEY" in err and "s3cret" not in err
    assert not (tmp_path / "o").exists()


def test_result_files_get_the_mode_the_umask_gives_and_keep_an_existing_files(tmp_path):
    """A teammate can read what the user's umask lets them read: a new file is rw-rw-rw- less the
    umask (not mkstemp's rw-------), and a rewritten one keeps its own mode."""
    from bench.runs import write_text
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "new.md", "x")
        assert (tmp_path / "new.md").stat().st_mode & 0o777 == 0o644
        os.umask(0o007)
        write_text(tmp_path / "group.md", "x")
        assert (tmp_path / "group.md").stat().st_mode & 0o777 == 0o660
        (tmp_path / "new.md").chmod(0o640)
        write_text(tmp_path / "new.md", "y")
        assert (tmp_path / "new.md").stat().st_mode & 0o777 == 0o640 and (tmp_path / "new.md").read_text() == "y"
    finally:
        os.umask(old)


@pytest.mark.parametrize("when", ["evaluate", "checkpoint"])
def test_a_run_directory_removed_while_it_trains_is_one_line_and_the_rerun_trains_it(when, write_recipe, tmp_path,
                                                                                     monkeypatch, capsys):
    """`rm -rf` of a run's folder during its first epoch: the run stops with one line at its next
    write (a metrics row, a mid-epoch checkpoint) instead of making the folder again with only what
    comes after; the same command then trains the run whole."""
    import bench.engine.loop as loop

    recipe, out = write_recipe(), tmp_path / "out"
    argv = [str(recipe), "--only", "efficient", "--smoke", "--no-progress", "--out", str(out)]
    run = out / "resnet18d" / "01-efficient" / "seed0"
    target = "evaluate" if when == "evaluate" else "save_checkpoint"
    real = getattr(loop, target)

    def removing(*args, **kwargs):
        import shutil

        shutil.rmtree(run, ignore_errors=True)
        return real(*args, **kwargs)

    monkeypatch.setattr(loop, target, removing)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (f"error: {run}: the run directory was removed while the run trained; nothing more is "
                       "written to it, and the same command trains the run again"), err
    assert not run.exists()
    monkeypatch.setattr(loop, target, real)
    assert main(argv) == 0
    assert json.loads((run / RunDir.FINAL).read_text())["top1"] >= 0
    assert [r["epoch"] for r in RunDir(run).read_metrics()] == list(range(RunConfig(**files.read_yaml(run / RunDir.CONFIG)).schedule.epochs))
