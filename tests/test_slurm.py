"""On a real SLURM (the two-node cluster of .ci/slurm-up.sh, reached through its own
SLURM_CONF): launch a smoke ablation with a teacher dependency, force a requeue of a running
job, and see every run finish, the requeued one with the weights of an uninterrupted run.
Without that cluster the tests skip, saying why; in CI (CI=true) they fail. The waits are
generous because other jobs may share the queue and the CPUs. tests/test_multinode.py uses
the helpers here for jobs across both nodes."""
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
from bench.ablation.status import query_job
from bench.config import load_recipe

from conftest import tiny_recipe

pytestmark = pytest.mark.slurm   # python -m pytest -m slurm, with the cluster up

ROOT = Path(__file__).resolve().parent.parent

# a check after every batch, a checkpoint at each (a tiny interval): a signal is acted on within a batch.
# "long" is caught running, then requeued (SIGTERM, KillWait of 2 s, SIGKILL); "signalled" is caught
# running, then sent submitit's requeue signal.
RECIPE = tiny_recipe("slurm-smoke", {
    "schedule": {"kind": "cosine", "epochs": 2, "milestones": None},
    "runtime": {"device": "cpu", "nan_check_steps": 1, "checkpoint_every_min": 1.0e-9}},
    teachers=[{"name": "teacher", "set": {"label_smoothing": {"eps": 0.1}}}],
    steps=[{"name": "long", "set": {"schedule": {"epochs": 20}}},
           {"name": "distill", "parent": "long", "set": {"schedule": {"epochs": 2}, "distill": {"teacher": "teacher", "temperature": 20}}},
           {"name": "signalled", "parent": "long", "set": {"schedule": {"epochs": 21}}}])


# the cluster of .ci/slurm-up.sh: its own config, nodes and namespaces (named as the nodes)
SLURM_CONF = "/etc/slurm-bench/slurm.conf"
NODES = ("benchnode1", "benchnode2")


def cluster_missing() -> str:
    """Why the two-node cluster cannot be used here, or "" when it is up."""
    if shutil.which("sbatch") is None:
        return "no sbatch on PATH"
    if not Path(SLURM_CONF).is_file():
        return f"no {SLURM_CONF}"
    proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "SLURM_CONF": SLURM_CONF})
    if proc.returncode != 0:
        return f"sinfo failed: {(proc.stderr or proc.stdout).strip().splitlines()[-1][:200]}"
    states = dict(line.split()[:2] for line in proc.stdout.splitlines() if len(line.split()) >= 2)
    up = ("idle", "mixed", "allocated", "completing")   # a trailing "*" is a node not responding
    down = [f"{n}: {states.get(n, 'missing')}" for n in NODES if states.get(n) not in up]
    return f"nodes not up ({', '.join(down)})" if down else ""


def require_cluster(monkeypatch) -> None:
    """Skip (fail in CI) without the two-node cluster; point SLURM's commands and the jobs at it,
    one thread per torch process."""
    why = cluster_missing()
    if why:
        message = f"the two-node SLURM cluster is not up ({why}); as root: .ci/slurm-up.sh"
        print(message)
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    monkeypatch.setenv("SLURM_CONF", SLURM_CONF)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture
def slurm(monkeypatch):
    require_cluster(monkeypatch)


def squeue_state(job_id: str) -> str:
    return subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True, text=True,
                          timeout=30).stdout.strip()


def force_requeue(job_id: str, run_dir: Path) -> None:
    """Requeue a running job once its run has an epoch checkpoint (and is not finished), and
    make it eligible at once (SLURM holds a requeued job for a while otherwise)."""
    wait_for(lambda: (run_dir / "last.pt").exists(), 600, f"the first epoch checkpoint of {run_dir}")
    assert not (run_dir / "final.json").exists(), f"{run_dir} finished before it could be requeued"
    subprocess.run(["scontrol", "requeue", job_id], check=True, timeout=30)
    wait_for(lambda: squeue_state(job_id) == "PENDING", 120, f"job {job_id} to be pending after the requeue")
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, timeout=30)


def signal_requeue(job_id: str, run_dir: Path) -> None:
    """Send a running job's tasks submitit's requeue signal (what SLURM sends `signal_delay_s`
    before the time limit) once its run has a checkpoint; the job checkpoints, requeues itself
    and exits. Then make it eligible at once."""
    wait_for(lambda: (run_dir / "last.pt").exists(), 600, f"the first checkpoint of {run_dir}")
    assert not (run_dir / "final.json").exists(), f"{run_dir} finished before it could be signalled"
    subprocess.run(["scancel", "--signal=USR2", job_id], check=True, timeout=30)
    wait_for(lambda: squeue_state(job_id) == "PENDING", 120, f"job {job_id} to requeue itself after SIGUSR2")
    subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], check=True, timeout=30)


def wait_jobs_ended(job_ids: list[str], timeout_s: float = 600) -> None:
    """Wait until SLURM runs none of these jobs any more (nor will: a dependency never met ends them)."""
    wait_for(lambda: all(query_job(j)[0] not in ("pending", "running") for j in job_ids), timeout_s,
             f"jobs {', '.join(job_ids)} to end")


def finished_status(out: Path, runs: int) -> str:
    """`status` of a results directory whose jobs have ended: every run finished."""
    proc = cli("status", str(out), check=False)
    assert proc.returncode == 0 and f"all {runs} runs finished" in proc.stdout, proc.stdout + proc.stderr
    return proc.stdout


def job_field(job_id: str, key: str) -> str:
    """One field of `scontrol show job` (finished jobs stay known for MinJobAge = 10 minutes)."""
    shown = subprocess.run(["scontrol", "-o", "show", "job", job_id], capture_output=True, text=True, timeout=30).stdout
    return next((f.split("=", 1)[1] for f in shown.split() if f.startswith(f"{key}=")), f"no {key} in: {shown}")


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
            ("teachers/teacher/seed0", "resnet18d/01-long/seed0", "resnet18d/02-distill/seed0",
             "resnet18d/03-signalled/seed0")}
    teacher_id = jobs["teachers/teacher/seed0"]["job_id"]
    assert jobs["resnet18d/02-distill/seed0"]["dependency"] == f"afterok:{teacher_id}"
    assert jobs["teachers/teacher/seed0"]["dependency"] is None

    interrupted = {"resnet18d/01-long/seed0": force_requeue, "resnet18d/03-signalled/seed0": signal_requeue}
    for path, interrupt in interrupted.items():
        interrupt(jobs[path]["job_id"], out / path)
    wait_jobs_ended([job["job_id"] for job in jobs.values()])
    assert "| distill |" in finished_status(out, 4)
    assert (out / "table.md").is_file() and (out / "runs.csv").is_file()

    local = tmp_path / "local"   # uninterrupted runs of the same configs
    run_ablation(plan(load_recipe(recipe), only=["long", "signalled"]), local, progress=False)
    for path, epochs in (("resnet18d/01-long/seed0", 20), ("resnet18d/03-signalled/seed0", 21)):
        assert job_field(jobs[path]["job_id"], "Restarts") == "1"
        log = Path(jobs[path]["stdout"]).read_text()
        assert "resuming" in log, log[-2000:]   # stopped before it finished; re-entered the run from last.pt
        rows = [json.loads(line) for line in (out / path / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == list(range(epochs))
        w_slurm = torch.load(out / path / "model.pt", weights_only=True)
        w_local = torch.load(local / path / "model.pt", weights_only=True)
        for key in w_local:
            torch.testing.assert_close(w_slurm[key], w_local[key], rtol=1e-5, atol=1e-6, msg=key)
        f_slurm, f_local = (json.loads((d / path / "final.json").read_text()) for d in (out, local))
        assert f_slurm["top1"] == f_local["top1"] and f_slurm["val_loss"] == pytest.approx(f_local["val_loss"], rel=1e-5)


# ---- without a cluster ------------------------------------------------------------------

def test_cluster_file_errors_name_the_key(tmp_path):
    from bench.ablation.launch import load_cluster
    from bench.errors import ConfigError

    path = tmp_path / "c.yaml"
    path.write_text("launcher: slurm\ngpus_per_nod: 8\n")
    with pytest.raises(ConfigError, match="unknown key 'gpus_per_nod' \\(did you mean 'gpus_per_node'\\?\\)"):
        load_cluster(str(path), {})
    for text, why in [("time_min: !!int abc\n", "malformed YAML: invalid literal"), ("- 1\n", "a cluster file is a mapping")]:
        path.write_text(text)   # the recipe's reader: a bad tag or a list is one line, not a traceback
        with pytest.raises(ConfigError, match=why):
            load_cluster(str(path), {})
    path.write_text("launcher: slurm\ngpus_per_node: 4\ntime_min: 30\n")
    cluster = load_cluster(str(path), {"time_min": 5, "partition": None})
    assert (cluster.gpus_per_node, cluster.tasks_per_node, cluster.time_min) == (4, 4, 5)
    for name in ("slurm.yaml", "cpu-smoke.yaml", "cpu-2node.yaml", "torchrun.yaml"):
        load_cluster(str(ROOT / "recipes" / "cluster" / name), {})


def test_status_reads_run_states_from_the_manifest(write_recipe, tmp_path, capsys):
    from bench.ablation.launch import merge_manifest
    from bench.cli import main

    specs = plan(load_recipe(write_recipe()), only=["efficient", "cosine"])
    out = tmp_path / "out"
    run_ablation(specs[:1], out, progress=False)
    merge_manifest(specs, out, "local", "tiny")
    assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    assert "finished" in text and "not started" in text and not (out / "table.md").exists()
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
