"""The state of every run of a results directory: finished, running, pending, failed (with
SLURM's reason and the log line that says why), interrupted or not started. Runs are those of
the directory's manifest (written by `run` and `launch`), else the run directories found in it."""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Optional

from bench.config import RunConfig
from bench.errors import BenchError
from bench.runs import RunDir, RunLock, read_json, read_yaml
from bench.runs.environment import command_output
from bench.runs.rundir import TEACHERS, run_paths, teacher_path

MANIFEST = "launch.json"  # in the results directory: every run of a launched ablation


_ACTIVE = {"PENDING": "pending", "REQUEUED": "pending", "REQUEUE_HOLD": "pending", "REQUEUE_FED": "pending",
           "CONFIGURING": "running", "RUNNING": "running", "COMPLETING": "running", "SUSPENDED": "pending",
           "RESIZING": "running", "STAGE_OUT": "running", "SIGNALING": "running"}


def query_job(job_id: str) -> tuple[str, str]:
    """("pending" | "running" | "ended" | "unknown", SLURM's state and reason) of a job."""
    line = command_output(["squeue", "-h", "-j", str(job_id), "-o", "%T|%r"], timeout=30)
    if line:
        state, _, reason = line.splitlines()[0].partition("|")
        if reason == "DependencyNeverSatisfied":
            return "ended", "its teacher's job failed (DependencyNeverSatisfied)"
        return _ACTIVE.get(state, "ended"), f"{state}" + (f" ({reason})" if reason and reason != "None" else "")
    info = command_output(["scontrol", "-o", "show", "job", str(job_id)], timeout=30)
    if info:
        fields = dict(part.split("=", 1) for part in info.split() if "=" in part)
        state = fields.get("JobState", "UNKNOWN")
        if state in _ACTIVE:
            return _ACTIVE[state], state
        return "ended", f"{state}, exit code {fields.get('ExitCode', '?')}, reason {fields.get('Reason', '?')}"
    acct = command_output(["sacct", "-n", "-X", "-P", "-j", str(job_id), "-o", "State,ExitCode"], timeout=30)
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
    rd = RunDir(Path(out) / record["path"])
    state = rd.state(record["config_hash"], record.get("teacher_hash"))
    job = read_json(rd / RunDir.JOB) or {}
    job_id = str(job.get("job_id", ""))
    if state.name == "finished":
        wrong = RunDir.wrong_type(state.final)
        return "finished", job_id, f"{rd / RunDir.FINAL}: {wrong}" if wrong else f"top-1 {state.final['top1']:.2f}"
    if state.name == "conflict":
        return "failed", job_id, f"holds a run of another experiment ({state.why})"
    epochs = len(rd.read_metrics())
    saved = rd.read_config() or {}
    total = saved.get("schedule", {}).get("epochs", "?")
    progress = f"{epochs} of {total} epochs done" if epochs else ""
    if not job_id:
        failed = read_json(rd / RunDir.FAILED)
        if failed:
            return "failed", "", "; ".join(x for x in (failed.get("error", ""), progress) if x)
        holder = RunLock(out, Path(record["path"])).held_by()
        if holder:
            return "running", "", f"epoch {epochs + 1} of {total}, lock held by {holder}"
        return ("interrupted" if epochs else "not started"), "", progress
    where, detail = query_job(job_id)
    if where in ("pending", "running"):
        return where, job_id, ", ".join(x for x in (detail, progress) if x)
    reason = log_reason(job.get("stderr")) or log_reason(job.get("stdout"))
    return "failed", job_id, "; ".join(x for x in (detail, reason, progress, f"log {job.get('stderr')}") if x)


def discovered_runs(out: Path) -> list[dict]:
    """The run directories under `out`, teachers first, each expected to be the run its own
    config.yaml (and, distilled from a teacher not trained here, its teacher.json) says; a student
    of a teacher trained here expects that teacher's config hash."""
    configs: dict[Path, Optional[RunConfig]] = {}
    for rel in run_paths(out):
        try:
            configs[rel] = RunConfig.model_validate(read_yaml(Path(out) / rel / RunDir.CONFIG))
        except (ValueError, BenchError):   # a config of another schema, a damaged file
            configs[rel] = None
    records = []
    for rel, cfg in configs.items():
        record = {"path": str(rel), "role": "teacher" if rel.parts[0] == TEACHERS else "student",
                  "config_hash": cfg.config_hash() if cfg else None}
        if cfg and cfg.distill:
            teacher = configs.get(teacher_path(cfg.distill.teacher, cfg.seed))
            record["teacher_hash"] = (teacher.config_hash() if teacher else
                                      (read_json(Path(out) / rel / RunDir.TEACHER) or {}).get("teacher_hash"))
        records.append(record)
    return sorted(records, key=lambda r: (r["role"] != "teacher", r["path"]))


def ablation_status(out: Path) -> list[dict]:
    """Every run of a results directory with its state: the manifest's runs, else those found."""
    manifest = read_json(Path(out) / MANIFEST)
    records = manifest["runs"] if manifest is not None else discovered_runs(out)
    if not records:
        raise BenchError(f"{out}: no runs here (no {MANIFEST} and no run directories)")
    rows = []
    for record in records:
        try:
            state, job_id, detail = run_status(out, record)
        except BenchError as err:   # a damaged file of the run: named, the other runs still shown
            state, job_id, detail = "failed", "", str(err)
        rows.append({"run": record["path"], "role": record["role"], "state": state, "job": job_id, "detail": detail})
    return rows


def runs(n: int) -> str:
    """"1 run", "3 runs"."""
    return f"{n} run{'' if n == 1 else 's'}"


def format_status(rows: list[dict]) -> str:
    width = max(len(r["run"]) for r in rows)
    lines = [f"{'run':<{width}}  {'state':<13}  {'job':<8}  detail"]
    lines += [f"{r['run']:<{width}}  {r['state']:<13}  {r['job']:<8}  {r['detail']}" for r in rows]
    counts = Counter(r["state"] for r in rows)
    lines.append(", ".join(f"{n} {state}" for state, n in counts.items()) + f" ({runs(len(rows))})")
    return "\n".join(lines)
