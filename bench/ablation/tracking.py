"""Weights & Biases mirror of an ablation (wandb is imported only when it is switched on).

One W&B run per training run: group = the ablation, job_type = the model, name = step/seed,
tags = the tricks switched on (`bench.config.tricks_on`), config = the resolved run config with flat dotted keys (the
names of the YAML and of the DataFrame columns). History: per-iteration `batch/lr` and
`batch/train_loss` against `global_step`, and the rows of metrics.jsonl against `epoch`.
Summary: the run's final.json record, also whole under `final` so that it can be read back.
A W&B failure prints one line and stops logging; it never stops training.
"""
from __future__ import annotations

import netrc
import os
import secrets
import shutil
import socket
import sys
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

import torch
import torch.distributed as dist

from bench.config import WandbConfig, tricks_on
from bench.engine.tracker import Tracker
from bench.errors import ConfigError
from bench.runs import RunDir, write_text
from bench.runs.rundir import flat_config

EPOCH_METRICS = ("train_loss", "lr", "val_top1", "val_top5", "val_loss", "images_per_s", "epoch_time_s")
MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline", "disabled": "disabled"}


def choose_settings(recipe: Optional[WandbConfig], flag: Optional[bool]) -> Optional[WandbConfig]:
    """`--wandb` switches logging on (with the recipe's settings, if any), `--no-wandb` off;
    without either, the recipe decides."""
    if flag is None:
        return recipe
    return (recipe or WandbConfig()) if flag else None


def _warn(message: str) -> None:
    print(f"wandb: {message}", file=sys.stderr, flush=True)


def _has_api_key(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _reachable(host: str, port: int, timeout_s: float = 3.0) -> bool:
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
        return True
    except OSError:
        return False


def resolve_mode(settings: WandbConfig) -> str:
    """online / offline / disabled: the recipe's, else $WANDB_MODE, else online only when an
    API key is known and the W&B server answers."""
    if settings.mode is not None:
        return settings.mode
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env:
        if env not in MODES:
            raise ConfigError(f"WANDB_MODE={env!r}: expected one of {', '.join(MODES)}")
        return MODES[env]
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    host = url.hostname or "api.wandb.ai"
    if _has_api_key(host) and _reachable(host, url.port or (80 if url.scheme == "http" else 443)):
        return "online"
    return "offline"


def ablation_group(settings: WandbConfig, out: Path) -> str:
    return settings.group or Path(out).resolve().name


def wandb_dir(out: Path) -> Path:
    """Where wandb writes its `wandb/` folder: $WANDB_DIR, else the results directory."""
    return Path(os.environ.get("WANDB_DIR") or out)


def run_config(spec) -> dict[str, Any]:
    """A run's W&B config: the identifying columns of its DataFrame row (model, role, step, seed,
    ..., path) and its resolved config, flattened as in that row."""
    return {**spec.record(), "path": str(spec.path), **flat_config(spec.config.model_dump(mode="json"))}


def _rank() -> int:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def _run_id(path: Path) -> str:
    """The W&B id kept in `path/wandb_id`, created on first use: a resumed run continues it."""
    file = path / RunDir.WANDB_ID
    if file.is_file() and file.read_text().strip():
        return file.read_text().strip()
    run_id = secrets.token_hex(4)
    write_text(file, run_id + "\n")
    return run_id


def _init(settings: WandbConfig, out: Path, id_dir: Path, **kwargs):
    """wandb.init with our defaults; an online start that fails is retried offline."""
    import wandb

    mode = resolve_mode(settings)
    if mode == "disabled":
        return None
    common = dict(project=settings.project or os.environ.get("WANDB_PROJECT") or "bench",
                  entity=settings.entity or os.environ.get("WANDB_ENTITY") or None,
                  group=ablation_group(settings, out), id=_run_id(id_dir), resume="allow",
                  dir=str(wandb_dir(out)), settings=wandb.Settings(console="off", silent=True), **kwargs)
    wandb_dir(out).mkdir(parents=True, exist_ok=True)
    try:
        return wandb.init(mode=mode, **common)
    except Exception as err:
        if mode != "online":
            raise
        _warn(f"online start failed ({type(err).__name__}: {err}); logging offline instead")
        return wandb.init(mode="offline", **common)


class WandbTracker(Tracker):
    def __init__(self, run, log_every_steps: int, run_dir: Path):
        self.run, self.every, self.pending, self.run_dir = run, log_every_steps, [], Path(run_dir)

    def _guard(self, what: str, fn) -> None:
        if self.run is None:
            return
        try:
            fn()
        except Exception as err:  # a tracking failure must never stop training
            _warn(f"{what} failed ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
                  "logging stops, training goes on")
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

    def _upload_gaps(self) -> None:
        """The validation logit gaps (Fig. 4b) as a file of the run; files in run.dir are uploaded."""
        if (self.run_dir / RunDir.LOGIT_GAPS).is_file():
            shutil.copyfile(self.run_dir / RunDir.LOGIT_GAPS, Path(self.run.dir) / RunDir.LOGIT_GAPS)

    def finish(self, final: Optional[dict] = None, failed: bool = False) -> None:
        self._guard("logging batches", self._flush)
        if final is not None:
            self._guard("writing the summary", lambda: self.run.summary.update({**final, "final": dict(final)}))
            self._guard("uploading the logit gaps", self._upload_gaps)
        self._guard("finishing the run", lambda: self.run.finish(exit_code=1 if failed else 0))
        self.run = None


def start_run(settings: Optional[WandbConfig], spec, run_dir: Path, out: Path) -> Tracker:
    """The tracker of one training run: a W&B run on rank 0 when `settings` is set, else a no-op.
    Never raises: a W&B problem prints one line and the run trains untracked."""
    if settings is None or _rank() != 0:
        return Tracker()
    try:
        run = _init(settings, out, Path(run_dir), job_type=spec.model, name=f"{spec.step}/seed{spec.seed}",
                    tags=tricks_on(spec.config), config=run_config(spec))
        if run is None:
            return Tracker()
        run.define_metric("global_step")
        run.define_metric("batch/*", step_metric="global_step")
        run.define_metric("epoch")
        for key in EPOCH_METRICS:
            run.define_metric(key, step_metric="epoch")
    except Exception as err:
        _warn(f"could not start a run for {spec.path} ({type(err).__name__}: {str(err).splitlines()[0][:200]}); "
              "training goes on without it")
        return Tracker()
    return WandbTracker(run, settings.log_every_steps, run_dir)
