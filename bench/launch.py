"""Executors for an ablation: local (sequential, in this process), torchrun (one multi-GPU
node) and SLURM through submitit (one job per run, teachers first, requeue + resume); and
the status of a launched ablation.

Cluster settings (partition, nodes, GPUs, time) live in their own YAML, never in the recipe.
A SLURM job re-enters the same entry point as a local run (`run_ablation` on the teacher, if
any, and the run), so a requeued job resumes from the run's last epoch checkpoint.
"""
from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal, Optional, Sequence

import yaml
from pydantic import Field, ValidationError

from bench import runs
from bench.ablation import RunSpec, run_state
from bench.errors import BenchError, ConfigError
from bench.schema import Strict

ROOT = Path(__file__).resolve().parent.parent
JOB = "job.json"          # in a run directory: the SLURM job that trains it, its logs
MANIFEST = "launch.json"  # in the results directory: every run of the launched ablation


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
    from bench.config import _format_validation

    raw: dict[str, Any] = {}
    where = str(path) if path else "cluster settings"
    if path:
        if not Path(path).is_file():
            raise ConfigError(f"{path}: cluster file not found")
        try:
            raw = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: malformed YAML: {getattr(err, 'problem', None) or err}") from None
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: cluster settings are a mapping, got {type(raw).__name__}")
    raw.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return ClusterConfig.model_validate(raw)
    except ValidationError as err:
        raise _format_validation(err, ClusterConfig, where) from None


class RunJob:
    """One run as a SLURM job: train the run (its teacher must be finished), resuming from
    its last checkpoint. submitit calls `checkpoint` on SIGUSR2 (time-out, preemption) and
    requeues this same callable."""

    def __init__(self, out: Path, spec: RunSpec, teacher: Optional[RunSpec]) -> None:
        self.out, self.spec, self.teacher = Path(out), spec, teacher

    def __call__(self) -> dict:
        from bench.ablation import run_ablation

        if self.teacher is not None and run_state(self.out, self.teacher) != "finished":
            raise BenchError(f"{self.out / self.teacher.path}: teacher run not finished")
        specs = [self.teacher, self.spec] if self.teacher is not None else [self.spec]
        return run_ablation(specs, self.out, progress=False)[-1]

    def checkpoint(self, *args: Any, **kwargs: Any):
        import submitit

        # the epoch checkpoint (last.pt) is the state; the requeued job re-enters __call__
        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def _executor(cluster: ClusterConfig, folder: Path, name: str, dependency: Optional[str]):
    import submitit

    executor = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=cluster.max_requeues)
    params: dict[str, Any] = dict(
        job_name=name, time=cluster.time_min, nodes=cluster.nodes, ntasks_per_node=cluster.tasks_per_node,
        cpus_per_task=cluster.cpus_per_task, signal_delay_s=cluster.signal_delay_s,
        setup=[f"export PYTHONPATH={ROOT}${{PYTHONPATH:+:$PYTHONPATH}}", *cluster.setup],
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
    states = {spec.path: run_state(out, spec) for spec in specs}
    conflicts = [str(out / p) for p, s in states.items() if s == "conflict"]
    if conflicts:
        raise BenchError(f"{conflicts[0]}: holds a run of a different config; choose another --out or move it away")
    by_path = {spec.path: spec for spec in specs}
    job_ids: dict[Path, str] = {}
    for spec in specs:   # plan() puts teachers first
        run_dir = out / spec.path
        if states[spec.path] == "finished":
            echo(f"{spec.label}: finished, skipped")
            continue
        previous = runs.read_json(run_dir / JOB)
        if previous and query_job(previous["job_id"])[0] in ("pending", "running"):
            job_ids[spec.path] = previous["job_id"]
            echo(f"{spec.label}: job {previous['job_id']} already queued")
            continue
        teacher = by_path.get(spec.teacher_path) if spec.teacher_path else None
        dependency = f"afterok:{job_ids[spec.teacher_path]}" if teacher and spec.teacher_path in job_ids else None
        runs.write_yaml(run_dir / "config.yaml", spec.config.model_dump(mode="json"))
        executor = _executor(cluster, run_dir / "slurm", f"bench:{spec.label}", dependency)
        job = executor.submit(RunJob(out, spec, teacher))
        job_ids[spec.path] = job.job_id
        runs.write_json(run_dir / JOB, {"job_id": job.job_id, "launcher": "slurm", "dependency": dependency,
                                        "stdout": str(job.paths.stdout), "stderr": str(job.paths.stderr),
                                        "submitted_at": time.strftime("%Y-%m-%dT%H:%M:%S")})
        echo(f"{spec.label}: submitted job {job.job_id}" + (f" ({dependency})" if dependency else ""))
    return {str(p): j for p, j in job_ids.items()}


def torchrun_command(nproc_per_node: int, run_argv: Sequence[str]) -> list[str]:
    """`torchrun` on this node, running the same command line in every process."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc_per_node}",
            str(ROOT / "run_ablation.py"), *run_argv]


# ---- status -----------------------------------------------------------------------------

_ACTIVE = {"PENDING": "pending", "REQUEUED": "pending", "REQUEUE_HOLD": "pending", "REQUEUE_FED": "pending",
           "CONFIGURING": "running", "RUNNING": "running", "COMPLETING": "running", "SUSPENDED": "pending",
           "RESIZING": "running", "STAGE_OUT": "running", "SIGNALING": "running"}


def _slurm(cmd: list[str]) -> Optional[str]:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def query_job(job_id: str) -> tuple[str, str]:
    """("pending" | "running" | "ended" | "unknown", SLURM's state and reason) of a job."""
    line = _slurm(["squeue", "-h", "-j", str(job_id), "-o", "%T|%r"])
    if line:
        state, _, reason = line.splitlines()[0].partition("|")
        if reason == "DependencyNeverSatisfied":
            return "ended", "its teacher's job failed (DependencyNeverSatisfied)"
        return _ACTIVE.get(state, "ended"), f"{state}" + (f" ({reason})" if reason and reason != "None" else "")
    info = _slurm(["scontrol", "-o", "show", "job", str(job_id)])
    if info:
        fields = dict(part.split("=", 1) for part in info.split() if "=" in part)
        state = fields.get("JobState", "UNKNOWN")
        if state in _ACTIVE:
            return _ACTIVE[state], state
        return "ended", f"{state}, exit code {fields.get('ExitCode', '?')}, reason {fields.get('Reason', '?')}"
    acct = _slurm(["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "State,ExitCode"])
    if acct:
        state, _, code = acct.splitlines()[0].partition("|")
        return ("pending" if state.startswith("PENDING") else "running" if state.startswith("RUNNING") else "ended",
                f"{state}, exit code {code}")
    return "unknown", "not known to SLURM any more"


def log_reason(path: Optional[str]) -> str:
    """The last line of a job's log that says what went wrong ("error: ...", an exception)."""
    if not path or not Path(path).is_file():
        return ""
    lines = [ln.strip() for ln in Path(path).read_text(errors="replace").splitlines() if ln.strip()]
    for ln in reversed(lines):
        if ln.startswith("error:") or "Error" in ln.split(":")[0] or ln.startswith("submitit ERROR"):
            return ln[:300]
    return ""


def run_status(out: Path, record: dict) -> tuple[str, str, str]:
    """(state, job id, detail) of one run: finished, running, pending, failed, interrupted, not submitted."""
    run_dir = Path(out) / record["path"]
    final = runs.read_json(run_dir / runs.FINAL)
    job = runs.read_json(run_dir / JOB) or {}
    job_id = str(job.get("job_id", ""))
    if final is not None:
        if final.get("config_hash") != record["config_hash"]:
            return "failed", job_id, "final.json holds a run of a different config"
        return "finished", job_id, f"top-1 {final['top1']:.2f}"
    epochs = len(runs.read_metrics(run_dir / runs.METRICS))
    progress = f"{epochs} epochs done" if epochs else ""
    if not job_id:
        return ("interrupted" if epochs else "not submitted"), "", progress
    where, detail = query_job(job_id)
    if where in ("pending", "running"):
        return where, job_id, ", ".join(x for x in (detail, progress) if x)
    reason = log_reason(job.get("stderr")) or log_reason(job.get("stdout"))
    return "failed", job_id, "; ".join(x for x in (detail, reason, progress, f"log {job.get('stderr')}") if x)


def ablation_status(out: Path) -> list[dict]:
    """Every run of a launched ablation with its state."""
    manifest = runs.read_json(Path(out) / MANIFEST)
    if manifest is None:
        raise BenchError(f"{out}: no {MANIFEST}; was this ablation started with 'run_ablation.py launch'?")
    rows = []
    for record in manifest["runs"]:
        state, job_id, detail = run_status(out, record)
        rows.append({"run": record["path"], "role": record["role"], "state": state, "job": job_id, "detail": detail})
    return rows


def format_status(rows: list[dict]) -> str:
    width = max(len(r["run"]) for r in rows)
    lines = [f"{'run':<{width}}  {'state':<13}  {'job':<8}  detail"]
    lines += [f"{r['run']:<{width}}  {r['state']:<13}  {r['job']:<8}  {r['detail']}" for r in rows]
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items()))
    return "\n".join(lines)


# ---- commands ---------------------------------------------------------------------------

def cmd_launch(argv: Sequence[str]) -> int:
    """`run_ablation.py launch RECIPE --launcher local|torchrun|slurm [cluster options] [run options]`."""
    import shutil

    from bench.ablation import check_writable, plan
    from bench.cli import cmd_run, run_parser
    from bench.config import load_recipe, parse_override

    p = run_parser()
    p.prog, p.description = "run_ablation.py launch", "Launch an ablation locally, with torchrun, or on SLURM."
    p.add_argument("--launcher", choices=["local", "torchrun", "slurm"], help="default: the cluster file's, else local")
    p.add_argument("--cluster", help="cluster settings YAML (e.g. recipes/cluster/slurm.yaml)")
    p.add_argument("--partition")
    p.add_argument("--nodes", type=int)
    p.add_argument("--gpus-per-node", type=int)
    p.add_argument("--time", type=int, dest="time_min", metavar="MIN", help="wall-time limit of each job, minutes")
    p.add_argument("--nproc-per-node", type=int, help="torchrun: processes on this node")
    args = p.parse_args(argv)
    cluster = load_cluster(args.cluster, {k: getattr(args, k) for k in (
        "launcher", "partition", "nodes", "gpus_per_node", "time_min", "nproc_per_node")})
    recipe = load_recipe(args.recipe)
    overrides = tuple(parse_override(text) for text in args.overrides)
    specs = plan(recipe, seeds=args.seeds, only=args.only, overrides=overrides, smoke=args.smoke, where=args.recipe)
    out = Path(args.out or Path("results") / (recipe.name + ("-smoke" if args.smoke else ""))).resolve()
    if cluster.launcher == "slurm" and shutil.which("sbatch") is None:
        raise BenchError("--launcher slurm: sbatch not found; run this on a SLURM login node")
    check_writable(out)
    merge_manifest(specs, out, cluster.launcher)
    run_argv = [str(Path(args.recipe).resolve()), "--out", str(out), *(["--smoke"] if args.smoke else []),
                *(["--no-progress"] if args.no_progress else []),
                *(["--seeds", *map(str, args.seeds)] if args.seeds else []),
                *(["--only", *args.only] if args.only else []),
                *[x for text in args.overrides for x in ("--set", text)]]
    if cluster.launcher == "local":
        return cmd_run(run_argv)
    if cluster.launcher == "torchrun":
        return subprocess.run(torchrun_command(cluster.nproc_per_node, run_argv)).returncode
    print(f"{recipe.name}: {len(specs)} runs -> {out}", flush=True)
    launch_slurm(specs, out, cluster)
    print(f"follow with: python run_ablation.py status {out}")
    return 0


def merge_manifest(specs: list[RunSpec], out: Path, launcher: str) -> None:
    """Add this launch's runs to the results directory's manifest (a later launch of the
    same run replaces its entry)."""
    old = runs.read_json(Path(out) / MANIFEST) or {"runs": []}
    new = {str(spec.path): {**spec.record(), "path": str(spec.path)} for spec in specs}
    merged = [r for r in old["runs"] if r["path"] not in new] + list(new.values())
    runs.write_json(Path(out) / MANIFEST, {"launcher": launcher, "runs": merged})


def cmd_status(argv: Sequence[str]) -> int:
    """`run_ablation.py status RESULTS_DIR`: every run's state; the report once all finished."""
    import argparse

    from bench.results import write_report

    p = argparse.ArgumentParser(prog="run_ablation.py status", description="State of every run of a launched ablation.")
    p.add_argument("results_dir")
    args = p.parse_args(argv)
    out = Path(args.results_dir)
    if not out.is_dir():
        raise BenchError(f"{out}: no such results directory")
    rows = ablation_status(out)
    print(format_status(rows))
    if all(r["state"] == "finished" for r in rows):
        print(write_report(out))
        print(f"all {len(rows)} runs finished: wrote {out / 'runs.csv'} and {out / 'table.md'}")
    return 1 if any(r["state"] == "failed" for r in rows) else 0
