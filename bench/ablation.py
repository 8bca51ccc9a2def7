"""A recipe becomes ordered runs (teachers first); finished runs are skipped, others resumed."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from bench import dist, runs
from bench.config import Recipe, RunConfig, check_recipe, model_names, resolve_step, resolve_teacher, smoke_config
from bench.errors import BenchError, ConfigError
from bench.guard import NonFiniteLoss
from bench.locks import RunLock
from bench.preflight import check_specs
from bench.resume import remove_stale_temporaries
from bench.tracking import ID_FILE, WandbConfig, start_run

FAILED = "failed.json"   # written when a run stops on a NaN/inf loss; removed when it finishes


@dataclass(frozen=True)
class RunSpec:
    """One training run of an ablation, with where it lives under the results directory."""

    model: str
    role: str                 # "student" or "teacher"
    step: str
    step_index: int           # 1-based position in the recipe; 0 for teachers
    parent_step: Optional[str]  # the step this one is compared with
    seed: int
    config: RunConfig
    path: Path                # relative to the results directory
    teacher_path: Optional[Path] = None
    paper_table: Optional[str] = None   # the recipe's paper_table, for the report
    paper_model: Optional[str] = None   # the paper's model this column stands in for
    teacher_config: Optional[RunConfig] = None   # a teacher given as weights (train: false)

    @property
    def label(self) -> str:
        return str(self.path)

    def record(self) -> dict[str, Any]:
        """The identifying fields every row about this run carries."""
        return {"model": self.model, "role": self.role, "step": self.step, "step_index": self.step_index,
                "parent_step": self.parent_step, "seed": self.seed, "config_hash": self.config.config_hash(),
                "teacher": str(self.teacher_path) if self.teacher_path else _given_teacher(self.teacher_config),
                "paper_table": self.paper_table, "paper_model": self.paper_model}


def _given_teacher(cfg: Optional[RunConfig]) -> Optional[str]:
    """How a teacher that is not trained here is named in the records."""
    if cfg is None:
        return None
    return cfg.model.checkpoint or f"{cfg.model.name}.{cfg.model.pretrained}"


def plan(recipe: Recipe, *, seeds: Optional[Sequence[int]] = None, only: Optional[Sequence[str]] = None,
         overrides: tuple[tuple[str, Any], ...] = (), smoke: bool = False, where: str = "recipe") -> list[RunSpec]:
    """Every run the recipe asks for, teachers first, then models × steps × seeds."""
    step_names = [s.name for s in recipe.steps]
    for name in only or ():
        if name not in step_names:
            raise ConfigError(f"--only {name}: no such step in {where} (steps: {', '.join(step_names)})")
    if overrides:
        check_recipe(recipe, where, overrides)
    shrink: Callable[[RunConfig], RunConfig] = smoke_config if smoke else (lambda c: c)
    students, teachers_needed = [], {}
    trained = {t.name: t.train for t in recipe.teachers}
    for seed in seeds if seeds is not None else recipe.seeds:
        for model in model_names(recipe):
            for i, step in enumerate(recipe.steps, start=1):
                if only and step.name not in only:
                    continue
                cfg = shrink(resolve_step(recipe, model, step.name, where, overrides, seed))
                teacher_path, teacher_cfg = None, None
                if cfg.distill is not None and trained[cfg.distill.teacher]:
                    teacher_path = Path("teachers", cfg.distill.teacher, f"seed{seed}")
                    teachers_needed[teacher_path] = (cfg.distill.teacher, seed)
                elif cfg.distill is not None:   # given weights: loaded, not trained
                    teacher_cfg = resolve_teacher(recipe, cfg.distill.teacher, where, overrides, seed)
                parent = step.parent or (recipe.steps[i - 2].name if i > 1 else None)
                students.append(RunSpec(model, "student", step.name, i, parent, seed, cfg,
                                        Path(model, f"{i:02d}-{step.name}", f"seed{seed}"), teacher_path,
                                        recipe.paper_table, recipe.paper_models.get(model, model), teacher_cfg))
    teachers = []
    for path, (name, seed) in teachers_needed.items():
        cfg = shrink(resolve_teacher(recipe, name, where, overrides, seed))
        teachers.append(RunSpec(cfg.model.name, "teacher", name, 0, None, seed, cfg, path))
    check_specs(teachers + students, where)   # unknown models, secrets: before anything is written
    return teachers + students


def run_state(out: Path, spec: RunSpec) -> str:
    """"finished", "partial" (a checkpoint to resume), "new", or "conflict" (another config)."""
    run_dir = out / spec.path
    final = runs.read_json(run_dir / runs.FINAL)
    if final is not None:
        return "finished" if final.get("config_hash") == spec.config.config_hash() else "conflict"
    if not (run_dir / runs.CHECKPOINT).exists():
        return "new"
    saved = runs.read_yaml(run_dir / "config.yaml")
    return "partial" if saved is not None and RunConfig.model_validate(saved) == spec.config else "conflict"


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

    def __init__(self, failed: dict[Path, str], finals: list[dict]):
        self.failed, self.finals = failed, finals
        listed = "; ".join(f"{path}: {why}" for path, why in failed.items())
        super().__init__(f"{len(failed)} run{'s' if len(failed) > 1 else ''} did not finish: {listed}")


def run_ablation(specs: list[RunSpec], out: Path, *, progress: bool = True,
                 echo: Callable[[str], None] = print, on_failure: str = "continue",
                 wandb: Optional[WandbConfig] = None) -> list[dict]:
    """Train every spec in order (skipping finished ones); returns their final records.
    With `wandb` settings, each run trained is mirrored to a W&B run (`bench.tracking`).

    Each run is trained under its lock (`bench.locks`): a run that another process holds is
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
    conflicts = [str(out / spec.path) for spec in specs if run_state(out, spec) == "conflict"]
    if conflicts:
        raise BenchError(f"{conflicts[0]}: holds a run of a different config; choose another --out or move it away")
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
            final = _run_one(spec, out, by_path, tag, echo, progress, failed, wandb)
        if final is not None:
            finals.append(final)
        elif on_failure == "stop":
            raise RunsFailed(failed, finals)
    if failed:
        raise RunsFailed(failed, finals)
    return finals


def _take_lock(lock: RunLock, spec: RunSpec, tag: str, echo: Callable[[str], None]) -> bool:
    """Rank 0 takes the run's lock; False when another process holds it and the run is skipped.
    Teachers (and every run under torchrun, whose ranks must agree) are waited for instead."""
    if not dist.is_main() or lock.try_acquire():
        return True
    if spec.role == "student" and not dist.current().distributed:
        echo(f"{tag}: skipped, locked by {lock.holder()} ({lock.path})")
        return False
    echo(f"{tag}: waiting, locked by {lock.holder()} ({lock.path})")
    lock.acquire()
    return True


def _run_one(spec: RunSpec, out: Path, by_path: dict[Path, RunSpec], tag: str, echo: Callable[[str], None],
             progress: bool, failed: dict[Path, str], wandb: Optional[WandbConfig] = None) -> Optional[dict]:
    """Train (or resume, or skip) one run while holding its lock; None when it failed."""
    from bench.train import pick_device, train

    run_dir, main = out / spec.path, dist.is_main()
    state = run_state(out, spec)   # again: another process may have finished it meanwhile
    if state == "conflict":
        raise BenchError(f"{run_dir}: holds a run of a different config; choose another --out or move it away")
    if state == "finished":
        echo(f"{tag}: finished, skipped")
        return runs.read_json(run_dir / runs.FINAL)
    before = runs.read_json(run_dir / FAILED)
    echo(f"{tag}: {'resuming' if state == 'partial' else 'training'}"
         + (f" (failed before: {before.get('error')})" if before else ""))
    created = not run_dir.exists()
    if main:
        remove_stale_temporaries(run_dir)
        runs.write_yaml(run_dir / "config.yaml", spec.config.model_dump(mode="json"))
        runs.write_json(run_dir / "env.json", runs.env_info(pick_device(spec.config.runtime.device),
                                                            dist.current().world_size))
    teacher_run = None
    if spec.teacher_path is not None:
        teacher_dir = out / spec.teacher_path
        if runs.read_json(teacher_dir / runs.FINAL) is None:
            raise BenchError(f"{teacher_dir}: teacher run not finished")
        teacher_run = (by_path[spec.teacher_path].config, teacher_dir / runs.WEIGHTS)
    elif spec.teacher_config is not None:
        teacher_run = (spec.teacher_config, None)   # weights from model.checkpoint / model.pretrained
    t0 = time.perf_counter()
    try:
        with start_run(wandb, spec, run_dir, out) as tracker:   # an exception closes the W&B run as failed
            result = train(spec.config, run_dir, teacher_run=teacher_run, label=spec.label, progress=progress,
                           tracker=tracker)
    except NonFiniteLoss as err:
        if main:
            runs.write_json(run_dir / FAILED, {**spec.record(), "error": str(err), "step": err.step,
                                                "epoch": err.epoch, "loss": str(err.value)})
        echo(f"    failed: {err}")
        failed[spec.path] = str(err)
        return None
    except BenchError:
        if main and created and not (run_dir / runs.CHECKPOINT).exists():
            remove_new_run(out, spec.path)   # bad input found at start-up leaves nothing behind
        raise
    final = {**spec.record(), **result, "wall_time_s": time.perf_counter() - t0}
    if main:
        (run_dir / FAILED).unlink(missing_ok=True)
        runs.write_json(run_dir / runs.FINAL, final)
    tracker.finish(final)
    dist.barrier()   # the next run may read this one's final.json (a teacher's)
    echo(f"    top-1 {final['top1']:.2f}  top-5 {final['top5']:.2f}  ({final['train_time_s']:.1f} s)")
    return final


def remove_new_run(out: Path, path: Path) -> None:
    """Delete what starting a new run wrote (and nothing else), then its empty folders."""
    run_dir = Path(out) / path
    for name in ("config.yaml", "env.json", runs.METRICS, ID_FILE):
        (run_dir / name).unlink(missing_ok=True)
    remove_stale_temporaries(run_dir)
    for folder in [run_dir, *run_dir.parents]:
        if folder == Path(out) or not folder.is_dir() or any(folder.iterdir()):
            break
        folder.rmdir()

