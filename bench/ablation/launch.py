"""Launchers for an ablation: local (sequential, in this process), torchrun (one multi-GPU
node) and SLURM through submitit (one job per run, teachers first, requeue + resume).

Cluster settings (partition, nodes, GPUs, time) live in their own YAML, never in the recipe.
A SLURM job re-enters the same entry point as a local run (`run_ablation` on the teacher, if
any, and the run), so a requeued job resumes from the run's last epoch checkpoint.
"""
from __future__ import annotations

import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import Field

from bench.ablation.execute import run_ablation, run_dir
from bench.ablation.plan import RunSpec
from bench.ablation.status import MANIFEST, query_job
from bench.config import validate
from bench.config.recipe import read_yaml
from bench.engine.interrupt import Preempted, StopRequest
from bench.errors import BenchError
from bench.runs import RunDir, read_json, write_json
from bench.strict import Strict

ROOT = Path(__file__).resolve().parent.parent.parent


class ClusterConfig(Strict):
    """Where and how runs are launched; the recipe does not change with it."""

    launcher: Literal["local", "torchrun", "slurm"] = "local"
    nproc_per_node: int = Field(1, gt=0)            # torchrun: processes (GPUs) on this node
    partition: Optional[str] = None
    account: Optional[str] = None
    qos: Optional[str] = None
    constraint: Optional[str] = None
    nodes: int = Field(1, gt=0)
    gpus_per_node: int = Field(0, ge=0)             # one task (process) per GPU
    cpus_per_task: int = Field(1, gt=0)
    mem_gb: Optional[float] = Field(None, gt=0)
    time_min: int = Field(60, gt=0)                 # wall-time limit of one job (a requeue restarts it)
    signal_delay_s: int = Field(90, ge=0)           # SIGUSR2 this long before the limit: requeue
    max_requeues: int = Field(10, ge=0)             # time-outs a run may requeue after
    setup: list[str] = []                           # shell lines run before each job (modules, venv)

    @property
    def tasks_per_node(self) -> int:
        return max(self.gpus_per_node, 1)


def load_cluster(path: Optional[str], overrides: dict[str, Any]) -> ClusterConfig:
    """The cluster YAML (if any) with the command line's values on top; errors name the key."""
    raw = read_yaml(Path(path), "cluster", "a mapping of settings") if path else {}
    raw.update({k: v for k, v in overrides.items() if v is not None})
    return validate(ClusterConfig, raw, str(path) if path else "cluster settings")


class RunJob:
    """One run as a SLURM job: train the run (its teacher must be finished), resuming from
    its last checkpoint. submitit calls `checkpoint` on SIGUSR2 (time-out, preemption) and
    requeues this same callable."""

    def __init__(self, out: Path, spec: RunSpec, teacher: Optional[RunSpec]) -> None:
        self.out, self.spec, self.teacher = Path(out), spec, teacher

    def __call__(self) -> dict:
        if self.teacher is not None and run_dir(self.out, self.teacher).state(self.teacher.config).name != "finished":
            raise BenchError(f"{self.out / self.teacher.path}: teacher run not finished")
        specs = [self.teacher, self.spec] if self.teacher is not None else [self.spec]
        # SLURM signals every task: the requeue signal (submitit's, --signal=USR2@signal_delay_s)
        # before the time limit, SIGTERM before a requeue, preemption or cancel (KillWait later,
        # SIGKILL). Each only sets a flag; the run checkpoints at its next check (all ranks at the
        # same step) and raises Preempted here, outside any signal handler.
        requeue = requeue_signal()
        on_requeue = signal.getsignal(requeue)   # submitit's: pickles checkpoint(), scontrol requeue, exit
        try:
            with StopRequest().installed([requeue, signal.SIGTERM]) as stop:
                return run_ablation(specs, self.out, progress=False, stop=stop)[-1]
        except Preempted as stopped:
            print(f"    {stopped}", flush=True)
            if stopped.signum == requeue and callable(on_requeue):
                on_requeue(stopped.signum, None)   # rank 0 requeues the job and exits; other ranks return here
            raise   # SIGTERM: SLURM ends (and requeues) the job itself

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        # last.pt is the state (written mid-epoch before this is called); the requeued job re-enters __call__
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def requeue_signal() -> signal.Signals:
    """The signal submitit asks SLURM for before the time limit: SIGUSR2 unless SUBMITIT_PREEMPT_SIGNAL."""
    name = os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2")
    try:
        return signal.Signals[f"SIG{name}"]
    except KeyError:
        raise BenchError(f"environment variable SUBMITIT_PREEMPT_SIGNAL = {name!r}: not a signal name (e.g. USR2)") from None


def _executor(cluster: ClusterConfig, folder: Path, name: str, dependency: Optional[str]):
    import submitit

    executor = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=cluster.max_requeues)
    params: dict[str, Any] = dict(
        job_name=name, time=cluster.time_min, nodes=cluster.nodes, ntasks_per_node=cluster.tasks_per_node,
        cpus_per_task=cluster.cpus_per_task, signal_delay_s=cluster.signal_delay_s,
        setup=list(cluster.setup),
        additional_parameters={"requeue": True})
    if cluster.gpus_per_node:
        params["gpus_per_node"] = cluster.gpus_per_node
    if cluster.mem_gb:
        params["mem"] = f"{int(cluster.mem_gb * 1024)}M"
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(cluster, key):
            params[key] = getattr(cluster, key)
    if dependency:
        params["dependency"] = dependency
    executor.update_parameters(**params)
    return executor


def launch_slurm(specs: list[RunSpec], out: Path, cluster: ClusterConfig, echo=print) -> dict[str, str]:
    """Submit one job per unfinished run, teachers first; a run that distils depends (afterok)
    on its teacher's job. Runs finished or already queued are left alone. Returns path → job id."""
    out = Path(out).resolve()
    states = {spec.path: run_dir(out, spec).check(spec.config, spec.teacher_hash).name for spec in specs}
    by_path = {spec.path: spec for spec in specs}
    job_ids: dict[Path, str] = {}
    for spec in specs:   # plan() puts teachers first
        rd = run_dir(out, spec)
        if states[spec.path] == "finished":
            echo(f"{spec.label}: finished, skipped")
            continue
        previous = read_json(rd / RunDir.JOB)
        if previous and query_job(previous["job_id"])[0] in ("pending", "running"):
            job_ids[spec.path] = previous["job_id"]
            echo(f"{spec.label}: job {previous['job_id']} already queued")
            continue
        teacher = by_path.get(spec.teacher_path) if spec.teacher_path else None
        dependency = f"afterok:{job_ids[spec.teacher_path]}" if teacher and spec.teacher_path in job_ids else None
        rd.write_config(spec.config, spec.teacher_hash)
        executor = _executor(cluster, rd / "slurm", f"bench:{spec.label}", dependency)
        job = executor.submit(RunJob(out, spec, teacher))
        job_ids[spec.path] = job.job_id
        write_json(rd / RunDir.JOB, {"job_id": job.job_id, "launcher": "slurm", "dependency": dependency,
                                        "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
                                        "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        echo(f"{spec.label}: submitted job {job.job_id}" + (f" ({dependency})" if dependency else ""))
    return {str(p): j for p, j in job_ids.items()}


def torchrun_command(nproc_per_node: int, run_argv: Sequence[str]) -> list[str]:
    """`torchrun` on this node, running the same command line in every process."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
            str(ROOT / "run_ablation.py"), *run_argv]


def merge_manifest(specs: list[RunSpec], out: Path, launcher: str, recipe: str) -> None:
    """Add this launch's runs to the results directory's manifest (a later launch of the
    same run replaces its entry). A folder holds one recipe's runs: the Δ of a step is taken
    against its parent in the same folder, which must be the same recipe's."""
    old = read_json(Path(out) / MANIFEST) or {"runs": []}
    if old.get("recipe", recipe) != recipe:
        raise BenchError(f"results directory {out}: holds the runs of recipe '{old['recipe']}', not '{recipe}' "
                         "(a step's Δ would be taken against another recipe's run); give another --out")
    new = {str(spec.path): {**spec.record(), "path": str(spec.path)} for spec in specs}
    merged = [r for r in old["runs"] if r["path"] not in new] + list(new.values())
    write_json(Path(out) / MANIFEST, {"launcher": launcher, "recipe": recipe, "runs": merged})
