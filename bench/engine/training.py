"""Everything one run trains with, built from its config: data, model, optimizer, teacher, schedule."""
from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torch import nn

from bench.config import RunConfig, schedule_for
from bench.engine import distributed as dist
from bench.engine.data import Data, build_data
from bench.engine.ghost_bn import GhostBatchNorm
from bench.engine.guard import LossGuard
from bench.engine.interrupt import StopRequest
from bench.engine.models import build_model, load_weights
from bench.engine.runtime import check_mps, precision_warning, resolve_deterministic, resolve_threads, say_once, set_threads
from bench.engine.step import Step, build_optimizer
from bench.engine.tracker import Tracker
from bench.errors import BenchError
from bench.runs.environment import cpu_info
from bench.tricks import weight_dtype


@dataclass
class LoopState:
    """What the loop advances as a run trains; a checkpoint saves and restores it."""

    mix_rng: np.random.Generator       # λ and the pairing of the batch-mixing trick
    guard: LossGuard
    tracker: Tracker = field(default_factory=Tracker)
    stop: StopRequest = field(default_factory=StopRequest)   # a signal asking the run to checkpoint and stop
    checkpoint: Optional[Path] = None   # the run directory's last.pt
    train_time_s: float = 0.0
    train_cpu_s: float = 0.0           # the processes' CPU time training, summed over ranks
    saved_at: str = ""                 # the checkpoint last written or restored, e.g. "epoch 3"; "" none
    saved_time: float = field(default_factory=time.monotonic)   # when (time.monotonic()), for the next one


@dataclass
class Training:
    """One run, as `setup` builds it from its config, and the loop's `state`."""

    cfg: RunConfig
    data: Data
    device: torch.device
    model: nn.Module                   # the plain model: evaluated, checkpointed, saved
    net: nn.Module                     # what the step calls: `model`, DDP-wrapped under torchrun / SLURM
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    teacher: Optional[nn.Module]       # frozen, eval mode; when cfg.distill is set
    lr_at: Callable[[int], float]      # the schedule: lr of a global step
    state: LoopState
    runtime: dict = field(default_factory=dict)   # resolved threads and determinism, for the run's record

    @property
    def steps_per_epoch(self) -> int:
        return len(self.data.train)

    @property
    def step(self) -> Step:
        """One optimizer step of this run: `t.step(images, labels, lr, mixing, terms)`."""
        return Step(self.net, self.optimizer, self.scaler, self.cfg, self.data.num_classes, self.device, self.teacher)


@dataclass
class EpochStats:
    """An epoch's training so far, on this rank; a mid-epoch checkpoint carries it (every rank's),
    so that a resumed epoch logs the row of an uninterrupted one."""

    loss_sum: torch.Tensor   # Σ loss × batch size on this rank, on the device (no sync yet)
    images: int = 0          # images this rank trained on
    lr: float = 0.0          # of the last step
    time_s: float = 0.0
    terms_sum: dict = field(default_factory=dict)   # with distillation: Σ part × batch size of the loss's parts
    epoch: int = 0
    batch: int = 0           # batches of the epoch trained: the data position
    cpu_s: float = 0.0       # this process's CPU time in the epoch (time.process_time)

    def add(self, loss: torch.Tensor, images: int, lr: float, terms: Optional[dict]) -> None:
        """One more batch of `images` images whose mean loss is `loss` (and parts `terms`)."""
        self.loss_sum += loss * images
        for key, value in (terms or {}).items():
            self.terms_sum[key] = self.terms_sum.get(key, 0) + value * images
        self.images, self.lr, self.batch = self.images + images, lr, self.batch + 1

    def sums(self) -> dict:
        """This rank's sums, on the CPU, for a checkpoint."""
        return {"loss_sum": self.loss_sum.cpu(), "images": self.images, "cpu_s": self.cpu_s,
                "terms_sum": {key: value.cpu() for key, value in self.terms_sum.items()}}


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic


def memory_format(cfg: RunConfig) -> torch.memory_format:
    return torch.channels_last if cfg.runtime.channels_last else torch.contiguous_format


def load_teacher(teacher_cfg: RunConfig, weights: Optional[Path], num_classes: int, in_chans: int,
                 device: torch.device, fmt: torch.memory_format = torch.contiguous_format,
                 dtype: torch.dtype = torch.float32) -> nn.Module:
    """The teacher of a distillation run, frozen in eval mode, in the student's memory format: from
    its run's final `weights`, or, when None, from its config's model.checkpoint or model.pretrained."""
    model = build_model(teacher_cfg.model, num_classes, in_chans)
    if weights is not None:
        load_weights(model, weights, f"teacher {teacher_cfg.model.name} for {num_classes} classes")
    return model.to(device, dtype=dtype, memory_format=fmt).eval().requires_grad_(False)


def setup(cfg: RunConfig, teacher_run: Optional[tuple[RunConfig, Optional[Path]]] = None,
          tracker: Optional[Tracker] = None) -> Training:
    """Join the process group, seed, and build the run's data, model, optimizer and teacher.

    Args:
        teacher_run: the teacher's config and final weights (None: its own checkpoint or
            pretrained tag), when `cfg.distill` is set.
    """
    ctx = dist.init(cfg.runtime.device)
    device = dist.local_device(cfg.runtime.device)   # cuda:LOCAL_RANK under torchrun / SLURM
    if device.type == "mps":
        check_mps(cfg, ctx.world_size)
    threads, source = resolve_threads(cfg.runtime.threads)
    set_threads(threads, source, show=dist.is_main())
    warning = precision_warning(cfg.efficient.precision, device, cpu_info()[1])
    if warning and dist.is_main():
        say_once(warning)
    deterministic = resolve_deterministic(cfg.runtime.deterministic, device)
    seed_everything(cfg.seed, deterministic)
    data = build_data(cfg.data, cfg.seed, ctx.rank, ctx.world_size, device)
    ghost = cfg.efficient.bn_batch_size
    if ghost is not None and (cfg.data.global_batch_size // ctx.world_size) % ghost:
        raise BenchError(f"efficient.bn_batch_size = {ghost}: does not divide the per-device batch of "
                         f"{cfg.data.global_batch_size // ctx.world_size} (data.global_batch_size = "
                         f"{cfg.data.global_batch_size} over {ctx.world_size} devices)")
    model = build_model(cfg.model, data.num_classes, data.in_chans, cfg.efficient.zero_gamma)
    model = model.to(device, dtype=weight_dtype(cfg.efficient.precision), memory_format=memory_format(cfg))
    if cfg.runtime.compile:
        model.compile()   # in place: state_dict keys stay those of the plain model
    optimizer = build_optimizer(model, cfg, device)
    # DDP: gradients averaged over ranks; ghost batch norm: BatchNorm statistics over slices
    net = dist.wrap_model(GhostBatchNorm(model, ghost) if ghost else model, device, cfg.runtime.sync_bn,
                          broadcast_buffers=ghost is None)
    teacher = None
    if cfg.distill is not None:
        teacher = load_teacher(*teacher_run, data.num_classes, data.in_chans, device, memory_format(cfg),
                               weight_dtype(cfg.efficient.precision))
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.efficient.precision == "fp16")
    return Training(cfg, data, device, model, net, optimizer, scaler, teacher,
                    schedule_for(cfg, len(data.train)), LoopState(np.random.default_rng(cfg.seed), LossGuard(device),
                                                                  tracker or Tracker()), runtime={"threads": threads, "threads_from": source,
                                                   "deterministic": deterministic, "world_size": ctx.world_size})
