"""Execute planned runs in order (teachers first): each under its lock, finished runs skipped,
unfinished ones resumed, a NaN/inf run marked failed and the runs that need it skipped."""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Optional

from bench.ablation.plan import RunSpec
from bench.ablation.tracking import start_run
from bench.config import WandbConfig
from bench.engine import distributed as dist
from bench.engine.guard import NonFiniteLoss
from bench.engine.interrupt import StopRequest
from bench.engine.loop import train
from bench.errors import BenchError
from bench.runs import RunDir, RunLock, load_torch, read_json, remove_stale_temporaries, write_json


def run_dir(out: Path, spec: RunSpec) -> RunDir:
    return RunDir(Path(out) / spec.path)


def check_writable(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as err:
        raise BenchError(f"results directory {out}: not writable ({err.strerror})") from None


class RunsFailed(BenchError):
    """Runs stopped by a NaN/inf loss, and the runs skipped because they needed one of them."""

    def __init__(self, failed: dict[Path, str]):
        listed = "; ".join(f"{path}: {why}" for path, why in failed.items())
        super().__init__(f"{len(failed)} run{'s' if len(failed) > 1 else ''} did not finish: {listed}")


def run_ablation(specs: list[RunSpec], out: Path, *, progress: bool = True,
                 echo: Callable[[str], None] = print, on_failure: str = "continue",
                 wandb: Optional[WandbConfig] = None, stop: Optional[StopRequest] = None) -> list[dict]:
    """Train every spec in order (skipping finished ones); returns their final records.
    With `wandb` settings, each run trained is mirrored to a W&B run (`bench.ablation.tracking`).
    With `stop` (set by a signal handler) the run in progress checkpoints and raises `Preempted`.

    Each run is trained under its lock (`bench.runs.locks`): a run that another process holds is
    skipped, a teacher is waited for. A run whose loss becomes NaN/inf is marked failed
    (failed.json) and the runs that distil from it are skipped; with `on_failure="stop"` the
    ablation stops there. Either way `RunsFailed` is raised once the loop ends.
    """
    out = Path(out)
    if specs:   # under torchrun / SLURM every rank runs this loop; rank 0 alone writes and logs
        dist.init(specs[0].config.runtime.device)
    main = dist.is_main()
    echo = echo if main else (lambda _: None)
    if main:
        check_writable(out)
    for spec in specs:   # a finished run of another config stops everything before anything trains
        run_dir(out, spec).check(spec.config, spec.teacher_hash)
    by_path = {spec.path: spec for spec in specs}
    finals: list[dict] = []
    failed: dict[Path, str] = {}
    for n, spec in enumerate(specs, start=1):
        tag = f"[{n}/{len(specs)}] {spec.label}"
        if spec.teacher_path in failed:
            failed[spec.path] = f"its teacher {spec.teacher_path} failed"
            echo(f"{tag}: skipped, its teacher failed")
            continue
        with RunLock(out, spec.path) as lock:
            if not _take_lock(lock, spec, tag, echo):
                continue
            dist.barrier()   # every rank decides on the run's state once rank 0 holds its lock
            final = _run_one(spec, out, by_path, tag, echo, progress, failed, wandb, stop)
        if final is not None:
            finals.append(final)
        elif on_failure == "stop":
            raise RunsFailed(failed)
    if failed:
        raise RunsFailed(failed)
    return finals


def _take_lock(lock: RunLock, spec: RunSpec, tag: str, echo: Callable[[str], None]) -> bool:
    """Rank 0 takes the run's lock; False when another process holds it and the run is skipped.
    Teachers (and every run under torchrun, whose ranks must agree) are waited for instead."""
    if not dist.is_main() or lock.try_acquire():
        return True
    if spec.role != "teacher" and not dist.current().distributed:
        echo(f"{tag}: skipped, locked by {lock.holder()} ({lock.path})")
        return False
    echo(f"{tag}: waiting, locked by {lock.holder()} ({lock.path})")
    lock.acquire()
    return True


def _run_one(spec: RunSpec, out: Path, by_path: dict[Path, RunSpec], tag: str, echo: Callable[[str], None],
             progress: bool, failed: dict[Path, str], wandb: Optional[WandbConfig] = None,
             stop: Optional[StopRequest] = None) -> Optional[dict]:
    """Train (or resume, or skip) one run while holding its lock; None when it failed."""
    rd, main = run_dir(out, spec), dist.is_main()
    state = rd.check(spec.config, spec.teacher_hash).name   # again: another process may have finished it meanwhile
    if state == "finished":
        echo(f"{tag}: finished, skipped")
        return rd.read_final()
    try:   # failed.json of an earlier attempt, for the log
        before = read_json(rd / RunDir.FAILED)
    except BenchError:
        before = {"error": "its failed.json is unreadable"}
    created = not rd.path.exists()
    notes = rd.recover() if main else []   # a damaged checkpoint or metrics log is moved aside
    if notes and not (rd / RunDir.CHECKPOINT).exists():
        state = "new"
    echo(f"{tag}: {'resuming' if state == 'partial' else 'training'}"
         + (f" (failed before: {before.get('error')})" if isinstance(before, dict) else ""))
    for note in notes:
        echo(f"    {note}")
    if main:
        remove_stale_temporaries(rd.path)
        rd.write_config(spec.config, spec.teacher_hash)
    dist.barrier()   # the other ranks read the checkpoint once rank 0 has set a damaged one aside
    t0 = time.perf_counter()
    try:
        with start_run(wandb, spec, rd.path, out) as tracker:   # an exception closes the W&B run as failed
            result = train(spec.config, rd, teacher_run=_teacher_run(spec, out, by_path), label=spec.label,
                           progress=progress, tracker=tracker, stop=stop)
    except NonFiniteLoss as err:
        if main:
            write_json(rd / RunDir.FAILED, {**spec.record(), "error": str(err), "step": err.step,
                                            "epoch": err.epoch, "loss": str(err.value)})
        echo(f"    failed: {err}")
        failed[spec.path] = str(err)
        return None
    except BenchError:
        if main and created and not (rd / RunDir.CHECKPOINT).exists():
            rd.remove_started(out)   # bad input found at start-up leaves nothing behind
        raise
    final = {**spec.record(), **result, "wall_time_s": time.perf_counter() - t0}
    if main:
        (rd / RunDir.FAILED).unlink(missing_ok=True)
        write_json(rd / RunDir.FINAL, final)
    tracker.finish(final)
    dist.barrier()   # the next run may read this one's final.json (a teacher's)
    echo(f"    top-1 {final['top1']:.2f}  top-5 {final['top5']:.2f}  ({final['train_time_s']:.1f} s)")
    return final


def _teacher_run(spec: RunSpec, out: Path, by_path: dict[Path, RunSpec]):
    """(teacher config, its final weights or None) of a run that distils, else None."""
    if spec.teacher_path is not None:
        teacher = run_dir(out, by_path[spec.teacher_path])
        if teacher.read_final() is None:
            raise BenchError(f"{teacher}: teacher run not finished")
        try:   # read here too, to say what to do about a damaged file
            load_torch(teacher / RunDir.WEIGHTS)
        except BenchError as err:
            raise BenchError(f"{err}; it holds the finished teacher's weights: restore it, or move {teacher} away "
                             "to train the teacher again") from None
        return by_path[spec.teacher_path].config, teacher / RunDir.WEIGHTS
    if spec.teacher_config is not None:
        return spec.teacher_config, None   # weights from model.checkpoint / model.pretrained
    return None
