"""Weights & Biases mirror of an ablation (wandb is imported only when it is switched on): one W&B
run per training run, grouped, tagged with its tricks, its config under the keys of runs.csv,
its history, summary and weights as docs/wandb.md lays out. A W&B failure prints one line and
stops logging; it never stops training.
"""
from __future__ import annotations

import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Any, Optional

import torch

from bench.ablation.wandb_connect import error_line, init_run, sweep_run_id, warn
from bench.config import WandbConfig, tricks_on
from bench.engine import distributed as dist
from bench.engine.tracker import Tracker
from bench.errors import BenchError
from bench.runs import RunDir, read_json, write_text

EPOCH_METRICS = ("train_loss", "lr", "val_top1", "val_top5", "val_loss", "images_per_s", "epoch_time_s")
RUN_SECTION = "run"   # the W&B config section of a run's identifying columns


def ablation_group(settings: WandbConfig, out: Path) -> str:
    return settings.group or Path(out).resolve().name


def for_sweep(settings: WandbConfig, specs: list, base: Path) -> tuple[WandbConfig, Path]:
    """The W&B settings and the results directory of a sweep's run: its own folder
    `base/<run id>` (the runs of a sweep differ in config, so they cannot share run directories),
    and the group `base`'s name (one for the whole sweep). A sweep's run is one student: its
    top1 is the metric the sweep optimises."""
    students = [spec for spec in specs if spec.role != "teacher"]
    if len(students) != 1:
        raise BenchError(f"in a W&B sweep (WANDB_SWEEP_ID={os.environ.get('WANDB_SWEEP_ID')}) one command trains one "
                         f"student run, this one plans {len(students)}: use --only STEP with one seed and one model")
    group = settings.group or Path(base).resolve().name
    return settings.model_copy(update={"group": group}), Path(base) / str(sweep_run_id())


def run_config(spec) -> dict[str, Any]:
    """A run's W&B config: its identifying columns under `run`, then the resolved config's
    sections (model, data, optim, schedule, ..., None for a trick that is off)."""
    return {RUN_SECTION: {**spec.record(), "path": str(spec.path)}, **spec.config.record()}


def artifact_name(group: str, path: Path) -> str:
    """The model artifact of the run at `path` in `group`: unique in a project, e.g.
    default-teachers-teacher-seed0 or default-resnet18d-04-distill-seed0."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", "-".join([group, *Path(path).parts]))[:128]


def model_artifact(name: str, run_dir: Path):
    """A run's final weights as a draft `model` artifact, its final.json record as metadata: the
    same weights and record give the same artifact (digest and metadata), whichever run builds it."""
    import wandb

    artifact = wandb.Artifact(name, type="model", metadata=read_json(Path(run_dir) / RunDir.FINAL) or {})
    artifact.add_file(str(Path(run_dir) / RunDir.WEIGHTS), name=RunDir.WEIGHTS)
    return artifact


def use_model(run, artifact) -> None:
    """Declare `artifact` an input of `run`. W&B refuses `use_artifact` offline, so an offline run
    writes the record that `use_artifact` writes online for a draft artifact (logged, then used
    once committed); `wandb sync` turns it into the same lineage."""
    if run.offline:
        run._log_artifact(artifact, is_user_created=True, use_after_commit=True)
    else:
        run.use_artifact(artifact)


def _run_id(path: Path) -> str:
    """The W&B id kept in `path/wandb_id`, created on first use: a resumed run continues it."""
    file = path / RunDir.WANDB_ID
    if file.is_file() and file.read_text().strip():
        return file.read_text().strip()
    run_id = secrets.token_hex(4)
    write_text(file, run_id + "\n")
    return run_id


class WandbTracker(Tracker):
    def __init__(self, run, log_every_steps: int, run_dir: Path, artifact: Optional[str] = None):
        self.run, self.every, self.pending, self.run_dir = run, log_every_steps, [], Path(run_dir)
        self.artifact = artifact   # the name its final weights are logged under; None: not logged

    def _guard(self, what: str, fn, stop: bool = True) -> None:
        """Call `fn`; a failure prints one line and, with `stop`, ends the logging of this run
        (an extra such as an artifact failing leaves the metrics logged)."""
        if self.run is None:
            return
        try:
            fn()
        except Exception as err:  # a tracking failure must never stop training
            warn(f"{what} failed ({error_line(err)}); " + ("logging stops, training goes on" if stop else "logging goes on"))
            if stop:
                self.run, self.pending = None, []

    def log_step(self, step: int, lr: float, loss) -> None:
        if self.run is not None and step % self.every == 0:
            self.pending.append((step, lr, loss.detach()))

    def _flush(self) -> None:
        if self.pending:
            losses = torch.stack([loss.float() for _, _, loss in self.pending]).tolist()  # one host sync
            for (step, lr, _), loss in zip(self.pending, losses):
                self.run.log({"global_step": step, "batch/lr": lr, "batch/train_loss": loss})
        self.pending = []

    def log_epoch(self, row: dict) -> None:
        self._guard("logging batches", self._flush)
        self._guard("logging an epoch", lambda: self.run.log(dict(row)))

    def _upload_per_image(self) -> None:
        """The validation logit gaps (Fig. 4b) and per-image results (the test set's noise) as files
        of the run; files in run.dir are uploaded."""
        for name in (RunDir.LOGIT_GAPS, RunDir.CORRECT):
            if (self.run_dir / name).is_file():
                shutil.copyfile(self.run_dir / name, Path(self.run.dir) / name)

    def _log_weights(self) -> None:
        if self.artifact is not None and (self.run_dir / RunDir.WEIGHTS).is_file():
            self.run.log_artifact(model_artifact(self.artifact, self.run_dir))

    def finish(self, final: Optional[dict] = None, failed: bool = False) -> None:
        self._guard("logging batches", self._flush)
        if final is not None:
            self._guard("writing the summary", lambda: self.run.summary.update({**final, "final": dict(final)}))
            self._guard("uploading the per-image files", self._upload_per_image, stop=False)
            self._guard("logging the model artifact", self._log_weights, stop=False)
        self._guard("finishing the run", lambda: self.run.finish(exit_code=1 if failed else 0))
        self.run = None


def start_run(settings: Optional[WandbConfig], spec, run_dir: Path, out: Path) -> Tracker:
    """The tracker of one training run: a W&B run on rank 0 when `settings` is set, else a no-op.
    Never raises: a W&B problem prints one line and the run trains untracked.

    In a sweep (started by `wandb agent`), the student is the sweep's run and the only run this
    process logs: W&B gives every `wandb.init` of the process the agent's run id, so teachers
    train untracked here (their weights still appear as the student's input artifact).
    """
    if settings is None or dist.read_env().rank != 0:
        return Tracker()
    sweep_id = sweep_run_id()
    if sweep_id is not None and spec.role == "teacher":
        warn(f"{spec.path} is not logged: in a sweep, this process logs only the sweep's run {sweep_id}")
        return Tracker()
    group = ablation_group(settings, out)
    try:
        if sweep_id is not None:
            write_text(Path(run_dir) / RunDir.WANDB_ID, sweep_id + "\n")
        run = init_run(settings, out, None if sweep_id else _run_id(Path(run_dir)), group, job_type=spec.role,
                       name=f"{spec.model}/{spec.step}/seed{spec.seed}", tags=tricks_on(spec.config),
                       config=run_config(spec))
        if run is None:
            return Tracker()
        run.define_metric("global_step")
        run.define_metric("batch/*", step_metric="global_step")
        run.define_metric("epoch")
        for key in EPOCH_METRICS:
            run.define_metric(key, step_metric="epoch")
    except Exception as err:
        warn(f"could not start a run for {spec.path} ({error_line(err)}); training goes on without it")
        return Tracker()
    tracker = WandbTracker(run, settings.log_every_steps, run_dir,
                           artifact_name(group, spec.path) if settings.log_model else None)
    if settings.log_model and spec.teacher_path is not None:
        teacher = Path(out) / spec.teacher_path
        tracker._guard("declaring the teacher's weights as input",
                       lambda: use_model(run, model_artifact(artifact_name(group, spec.teacher_path), teacher)), stop=False)
    return tracker
