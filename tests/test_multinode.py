"""Training across the two nodes of .ci/slurm-up.sh (network namespaces benchnode1 and
benchnode2 on this host, one CPU each): DDP over gloo between the nodes ends with the weights
and results of one process, whether the two ranks come from `sbatch` + `srun`, from the
launcher (submitit, a teacher requeued mid-run and a student waiting on it) or from two
torchrun agents meeting at a c10d rendezvous. Everything runs in float64 with per-sample
normalisation (GroupNorm with one group), so splitting each global batch over two ranks changes
nothing but the order of a few sums: the weights agree to 1e-10 on any machine.
Without the cluster the tests skip, saying why; in CI (CI=true) they fail."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_slurm import NODES, ROOT, cli, finished_status, force_requeue, job_field, require_cluster, squeue_state, wait_jobs_ended

from bench.ablation import plan, run_ablation
from bench.config import load_recipe

from conftest import tiny_recipe

pytestmark = pytest.mark.slurm   # python -m pytest -m slurm, with the cluster up

BASE = {"model": {"kwargs": {"norm_layer": "groupnorm1"}}, "schedule": {"kind": "cosine", "epochs": 2, "milestones": None},
        "efficient": {"zero_gamma": None, "precision": "fp64"}, "runtime": {"device": "cpu"}, "label_smoothing": {"eps": 0.1}}
SMOKE = tiny_recipe("two-node-smoke", BASE, steps=[{"name": "base"}])
# the teacher runs long enough to be caught running and requeued; the student distils from it
DISTILL = tiny_recipe("two-node-distill", BASE, teachers=[{"name": "teacher", "set": {"schedule": {"epochs": 30}}}],
                      steps=[{"name": "student", "set": {"distill": {"teacher": "teacher", "temperature": 20}}}])
RUN = Path("resnet18d/01-base/seed0")
WORKERS_ENV = {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@pytest.fixture(scope="module")
def cluster():
    with pytest.MonkeyPatch.context() as mp:
        require_cluster(mp)
        yield


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def train_one_process(recipe: Path, out: Path) -> Path:
    """Every run of the recipe in this process, one intra-op thread (OMP_NUM_THREADS, as the nodes)."""
    threads = torch.get_num_threads()
    try:
        run_ablation(plan(load_recipe(recipe)), out, progress=False)
    finally:
        torch.set_num_threads(threads)
    return out


@pytest.fixture(scope="module")
def one_process(cluster, tmp_path_factory) -> Path:
    """SMOKE trained by one process: what the two-node runs must reproduce."""
    tmp = tmp_path_factory.mktemp("one")
    return train_one_process(write(tmp / "smoke.yaml", SMOKE), tmp / "out")


def assert_same_run(ref: Path, run: Path) -> None:
    """Same weights (float64, to 1e-10), same top-1, same losses epoch by epoch (the logged
    losses agree to float32 rounding: validation scores float32 logits)."""
    w_ref, w_run = (torch.load(d / "model.pt", weights_only=True) for d in (ref, run))
    assert w_ref.keys() == w_run.keys()
    assert any(w.dtype == torch.float64 for w in w_ref.values())
    for key in w_ref:
        torch.testing.assert_close(w_run[key], w_ref[key], rtol=0, atol=1e-10, msg=key)
    f_ref, f_run = (json.loads((d / "final.json").read_text()) for d in (ref, run))
    assert f_run["top1"] == f_ref["top1"] and f_run["val_loss"] == pytest.approx(f_ref["val_loss"], rel=1e-6)
    m_ref, m_run = ([json.loads(line) for line in (d / "metrics.jsonl").read_text().splitlines()] for d in (ref, run))
    assert [r["epoch"] for r in m_run] == [r["epoch"] for r in m_ref]
    assert [r["train_loss"] for r in m_run] == pytest.approx([r["train_loss"] for r in m_ref], rel=1e-6)
    env = json.loads((run / "env.json").read_text())
    assert env["world_size"] == 2 and env["hostname"] in NODES, env


def wait_job_done(job_id: str, log: Path) -> None:
    wait_jobs_ended([job_id])
    state = job_field(job_id, "JobState")
    assert state == "COMPLETED", f"job {job_id}: {state}\n" + (log.read_text()[-3000:] if log.exists() else "")


def test_sbatch_srun_across_two_nodes_matches_one_process(cluster, one_process, tmp_path):
    recipe, out = write(tmp_path / "smoke.yaml", SMOKE), tmp_path / "two"
    q = shlex.quote
    script = write(tmp_path / "job.sh", f"""#!/bin/bash
#SBATCH --job-name=bench-two-node --nodes=2 --ntasks-per-node=1 --cpus-per-task=1 --time=10
#SBATCH --output={tmp_path}/job.%j.out
export OMP_NUM_THREADS=1
srun {q(sys.executable)} {q(str(ROOT / "run_ablation.py"))} {q(str(recipe))} --out {q(str(out))} --no-progress
""")
    job_id = subprocess.run(["sbatch", "--parsable", str(script)], capture_output=True, text=True, check=True,
                            timeout=30).stdout.strip().split(";")[0]
    log = tmp_path / f"job.{job_id}.out"
    wait_job_done(job_id, log)
    assert job_field(job_id, "NodeList") == "benchnode[1-2]"
    assert_same_run(one_process / RUN, out / RUN)
    assert json.loads((out / RUN / "env.json").read_text())["hostname"] == "benchnode1"   # rank 0: the first node


def test_launch_on_two_nodes_teacher_requeued_student_waits(cluster, tmp_path):
    recipe, out = write(tmp_path / "distill.yaml", DISTILL), tmp_path / "out"
    launched = cli("launch", str(recipe), "--launcher", "slurm", "--cluster", "recipes/cluster/cpu-2node.yaml",
                   "--out", str(out))
    assert launched.stdout.count("submitted job") == 2, launched.stdout
    teacher_path, student_path = Path("teachers/teacher/seed0"), Path("resnet18d/01-student/seed0")
    teacher, student = (json.loads((out / p / "job.json").read_text()) for p in (teacher_path, student_path))
    assert student["dependency"] == f"afterok:{teacher['job_id']}" and teacher["dependency"] is None
    assert job_field(teacher["job_id"], "NumNodes") == "2"

    # the running 2-node teacher is requeued; its student keeps waiting, then both finish
    force_requeue(teacher["job_id"], out / teacher_path)
    assert squeue_state(student["job_id"]) == "PENDING"
    wait_jobs_ended([teacher["job_id"], student["job_id"]])
    finished_status(out, 2)
    assert job_field(teacher["job_id"], "Restarts") == "1"
    assert job_field(student["job_id"], "NodeList") == "benchnode[1-2]"
    log = Path(teacher["stdout"]).read_text()
    assert "resuming" in log, log[-2000:]   # the requeued job re-entered the run from last.pt

    # one process, uninterrupted: the same teacher, and the same student distilled from it
    local = train_one_process(recipe, tmp_path / "local")
    assert_same_run(local / teacher_path, out / teacher_path)
    assert_same_run(local / student_path, out / student_path)


def on_node(node: str, argv: list[str]) -> list[str]:
    """A command run on one node: in its network namespace, under its host name."""
    return ["ip", "netns", "exec", node, "unshare", "--uts", "sh", "-c", 'hostname "$0" && exec "$@"', node, *argv]


def test_torchrun_across_two_nodes_matches_one_process(cluster, one_process, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("entering the nodes' network namespaces needs root")
    recipe = write(tmp_path / "smoke.yaml", SMOKE)
    port = 29400 + os.getpid() % 500
    outs, logs, procs = [tmp_path / f"out-{n}" for n in NODES], [tmp_path / f"{n}.log" for n in NODES], []
    try:
        for rank, node in enumerate(NODES):   # each agent its own --out: only rank 0 may write there
            argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(rank),
                    "--nproc-per-node", "1", "--rdzv-backend", "c10d", "--rdzv-endpoint", f"{NODES[0]}:{port}",
                    "--rdzv-id", f"bench-{port}", str(ROOT / "run_ablation.py"), str(recipe),
                    "--out", str(outs[rank]), "--no-progress"]
            with logs[rank].open("w") as log:
                procs.append(subprocess.Popen(on_node(node, argv), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                              env={**os.environ, **WORKERS_ENV}))
        codes = [p.wait(timeout=600) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert codes == [0, 0], "\n".join(f"--- {log.name}\n{log.read_text()[-3000:]}" for log in logs)
    ranked = [o for o in outs if (o / RUN / "env.json").is_file()]
    assert len(ranked) == 1, f"a run directory under {ranked}, expected one --out (rank 0's)"
    others = [str(f) for o in outs if o != ranked[0] for f in o.rglob("*") if f.is_file()]
    assert others == [], f"rank 1 wrote files: {others}"
    assert_same_run(one_process / RUN, ranked[0] / RUN)
