"""On a real SLURM (the single-node cluster of .ci/slurm-up.sh): launch a smoke ablation with a
teacher dependency, force a requeue of a running job, and see every run finish, the requeued
one with the weights of an uninterrupted run. In CI (CI=true) a missing SLURM is a failure.
The waits are generous because other jobs may share the queue and the CPUs."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.ablation import plan, run_ablation
from bench.config import load_recipe

ROOT = Path(__file__).resolve().parent.parent

RECIPE = """
name: slurm-smoke
seeds: [0]
base:
  model: {name: resnet18d, small_input: true, kwargs: {channels: [8, 16, 32, 64], stem_width: 8}}
  data: {dataset: digits, global_batch_size: 64, max_train_batches: 3, max_val_batches: 1}
  optim: {lr_per_256: 0.4}
  schedule: {kind: cosine, epochs: 2, warmup_epochs: 1}
  efficient: {zero_gamma: true, no_bias_decay: true, precision: fp32}
  runtime: {device: cpu}
teachers:
  - name: teacher
    set: {label_smoothing: {eps: 0.1}}
steps:
  - name: long                  # long enough to be caught running, then requeued
    set: {schedule: {epochs: 100}}   # outlives the requeue signal and KillWait, even on a fast machine
  - name: distill
    parent: long
    set: {schedule: {epochs: 2}, distill: {teacher: teacher, temperature: 20}}
"""


def slurm_up() -> bool:
    if shutil.which("sbatch") is None:
        return False
    proc = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True)
    return proc.returncode == 0 and any(s in proc.stdout for s in ("idle", "mixed", "allocated"))


@pytest.fixture
def slurm():
    if not slurm_up():
        if os.environ.get("CI") == "true":
            pytest.fail("SLURM is not available (run .ci/slurm-up.sh as root)")
        pytest.skip("no SLURM cluster here (sbatch/sinfo)")


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, "run_ablation.py", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)
    assert not check or proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def wait_for(condition, timeout_s: float, what: str):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")


def test_slurm_launch_with_teacher_dependency_and_forced_requeue(slurm, tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(RECIPE)
    out = tmp_path / "out"
    launched = cli("launch", str(recipe), "--launcher", "slurm", "--cluster", "recipes/cluster/cpu-smoke.yaml",
                   "--out", str(out))
    assert "submitted job" in launched.stdout
    jobs = {p: json.loads((out / p / "job.json").read_text()) for p in
            ("teachers/teacher/seed0", "resnet18d/01-long/seed0", "resnet18d/02-distill/seed0")}
    teacher_id = jobs["teachers/teacher/seed0"]["job_id"]
    assert jobs["resnet18d/02-distill/seed0"]["dependency"] == f"afterok:{teacher_id}"
    assert jobs["teachers/teacher/seed0"]["dependency"] is None

    long_dir, long_id = out / "resnet18d/01-long/seed0", jobs["resnet18d/01-long/seed0"]["job_id"]
    wait_for(lambda: (long_dir / "last.pt").exists(), 600, "the first epoch checkpoint of the long run")
    assert not (long_dir / "final.json").exists(), "the long run finished before it could be requeued"
    subprocess.run(["scontrol", "requeue", long_id], check=True, timeout=30)
    # SLURM holds a requeued job for about 2 minutes before it is eligible again; release it now
    wait_for(lambda: subprocess.run(["squeue", "-h", "-j", long_id, "-o", "%T"], capture_output=True,
                                    text=True).stdout.strip() == "PENDING", 120, "the requeued job to be pending")
    subprocess.run(["scontrol", "update", f"JobId={long_id}", "StartTime=now"], check=True, timeout=30)

    def all_finished():
        proc = cli("status", str(out), check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr   # 1: a run failed
        return proc if "all 3 runs finished" in proc.stdout else None
    final_status = wait_for(all_finished, 600, "every run to finish")
    assert (out / "table.md").is_file() and (out / "runs.csv").is_file()
    assert "| distill |" in final_status.stdout

    shown = subprocess.run(["scontrol", "-o", "show", "job", long_id], capture_output=True, text=True).stdout
    assert "Restarts=1" in shown, shown
    log = Path(jobs["resnet18d/01-long/seed0"]["stdout"]).read_text()
    assert "resuming" in log, log[-2000:]   # the requeued job re-entered the run from last.pt
    epochs = [json.loads(line)["epoch"] for line in (long_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(100))

    # an uninterrupted run of the same config ends with the same weights and result
    local = tmp_path / "local"
    run_ablation(plan(load_recipe(recipe), only=["long"]), local, progress=False)
    w_slurm = torch.load(long_dir / "model.pt", weights_only=True)
    w_local = torch.load(local / "resnet18d/01-long/seed0/model.pt", weights_only=True)
    for key in w_local:
        torch.testing.assert_close(w_slurm[key], w_local[key], rtol=1e-5, atol=1e-6, msg=key)
    f_slurm, f_local = (json.loads((d / "final.json").read_text()) for d in (long_dir, local / "resnet18d/01-long/seed0"))
    assert f_slurm["top1"] == f_local["top1"] and f_slurm["val_loss"] == pytest.approx(f_local["val_loss"], rel=1e-5)


# ---- without a cluster ------------------------------------------------------------------

def test_cluster_file_errors_name_the_key(tmp_path):
    from bench.ablation.launch import load_cluster
    from bench.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("launcher: slurm\ngpus_per_nod: 8\n")
    with pytest.raises(ConfigError, match="unknown key 'gpus_per_nod' \\(did you mean 'gpus_per_node'\\?\\)"):
        load_cluster(str(path), {})
    path.write_text("launcher: slurm\ngpus_per_node: 4\ntime_min: 30\n")
    cluster = load_cluster(str(path), {"time_min": 5, "partition": None})
    assert (cluster.gpus_per_node, cluster.tasks_per_node, cluster.time_min) == (4, 4, 5)
    for name in ("slurm.yaml", "cpu-smoke.yaml", "torchrun.yaml"):
        load_cluster(str(ROOT / "recipes" / "cluster" / name), {})


def test_status_reads_run_states_from_the_manifest(write_recipe, tmp_path, capsys):
    from bench.ablation.launch import merge_manifest
    from bench.cli import main

    specs = plan(load_recipe(write_recipe()), only=["efficient", "cosine"])
    out = tmp_path / "out"
    run_ablation(specs[:1], out, progress=False)
    merge_manifest(specs, out, "local")
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "finished" in text and "not submitted" in text and not (out / "table.md").exists()
    run_ablation(specs, out, progress=False)
    assert main(["status", str(out)]) == 0
    assert "all 2 runs finished" in capsys.readouterr().out and (out / "table.md").is_file()


@pytest.mark.parametrize("argv, fragment", [
    (["status", "{tmp}"], "no launch.json"),
    (["launch", "recipes/default.yaml", "--cluster", "{tmp}/none.yaml"], "cluster file not found"),
])
def test_launch_and_status_bad_input_is_one_line(argv, fragment, tmp_path, capsys, monkeypatch):
    from bench.cli import main

    monkeypatch.chdir(ROOT)
    assert main([a.format(tmp=tmp_path) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and fragment in err and "\n" not in err


def test_slurm_launcher_without_sbatch_is_an_error(tmp_path, capsys, monkeypatch):
    from bench.cli import main

    monkeypatch.chdir(ROOT)
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert main(["launch", "recipes/default.yaml", "--launcher", "slurm", "--out", str(tmp_path / "o")]) == 2
    assert "sbatch not found" in capsys.readouterr().err and not (tmp_path / "o").exists()
