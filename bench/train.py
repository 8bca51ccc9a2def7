"""The training engine: one loss where every trick meets, one short loop, evaluation."""
from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from bench import dist, runs
from bench.config import RunConfig
from bench.data import build_data
from bench.guard import LossGuard
from bench.models import build_model
from bench.resume import capture_rng, restore_rng
from bench.tracking import Tracker
from bench.tricks import (autocast_dtype, combine_distill, distill_loss, lr_at, mix_batch, param_groups,
                          sample_mixing, smooth_targets, soft_cross_entropy)


def training_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: RunConfig,
                  num_classes: int, mixing: Optional[tuple[float, torch.Tensor]] = None,
                  teacher: Optional[nn.Module] = None) -> torch.Tensor:
    """The loss of one batch, tricks in a fixed order: one-hot → smooth → mix → soft CE,
    plus the distillation term from the teacher on the same (mixed) images (Eq. 6).

    Args:
        images: (N, C, H, W); labels: (N,) class indices.
        mixing: (λ, perm) when mixup is on for this batch.
        teacher: an eval-mode model when `cfg.distill` is set.
    """
    if cfg.label_smoothing is not None:
        targets = smooth_targets(labels, num_classes, cfg.label_smoothing.eps, cfg.label_smoothing.form)
    else:
        targets = F.one_hot(labels, num_classes).float()
    if mixing is not None:
        images, targets = mix_batch(images, targets, *mixing)
    logits = model(images)
    loss = soft_cross_entropy(logits, targets)
    if cfg.distill is not None:
        with torch.inference_mode():   # no autograd bookkeeping for the frozen teacher
            teacher_logits = teacher(images)
        teacher_logits = teacher_logits.clone()   # an ordinary tensor again, usable under autograd
        soft = distill_loss(logits, teacher_logits, cfg.distill.temperature)
        loss = combine_distill(loss, soft, cfg.distill.hard_weight)
    return loss


def pick_device(name: str) -> torch.device:
    return dist.local_device(name)   # cuda:LOCAL_RANK under torchrun / SLURM


def autocast(device: torch.device, precision: str):
    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x


def build_optimizer(model: nn.Module, cfg: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    """Nesterov SGD over the recipe's param groups, the lr set per step by the loop.

    One fused kernel for all parameters where PyTorch has it (CUDA, CPU), else the multi-tensor
    (foreach) path: the same update as the per-parameter loop, fewer kernel launches.
    """
    groups = param_groups(model, cfg.optim.weight_decay, cfg.efficient.no_bias_decay)
    fast = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
    return torch.optim.SGD(groups, lr=0.0, momentum=cfg.optim.momentum, nesterov=cfg.optim.nesterov, **fast)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
               images: torch.Tensor, labels: torch.Tensor, lr: float, cfg: RunConfig, num_classes: int,
               device: torch.device, mixing: Optional[tuple[float, torch.Tensor]] = None,
               teacher: Optional[nn.Module] = None) -> torch.Tensor:
    """One optimizer step on one batch; returns the detached loss without a device sync.

    Args:
        images: (N, C, H, W) and labels: (N,) as the loader gives them (moved to `device` here).
        lr: this step's learning rate, from `lr_at`.
    """
    for group in optimizer.param_groups:
        group["lr"] = lr
    images, labels = to_device(images, device, cfg.runtime.channels_last), labels.to(device, non_blocking=True)
    if mixing is not None:
        mixing = (mixing[0], mixing[1].to(device, non_blocking=True))
    with autocast(device, cfg.efficient.precision):
        loss = training_loss(model, images, labels, cfg, num_classes, mixing, teacher)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


def logit_gaps(logits: torch.Tensor) -> torch.Tensor:
    """(N, K) logits → (N,): the max logit minus the mean of the other K − 1 (paper Fig. 4b)."""
    top = logits.max(dim=1).values
    return top - (logits.sum(dim=1) - top) / (logits.shape[1] - 1)


@torch.no_grad()
def evaluate(model: nn.Module, batches, cfg: RunConfig, device: torch.device,
             gaps: Optional[list] = None) -> dict:
    """Top-1 and top-5 accuracy (%) and mean cross-entropy over the validation batches;
    with a `gaps` list, also appends each batch's `logit_gaps` (on the CPU) to it."""
    model.eval()
    correct1 = correct5 = total = 0
    loss_sum = torch.zeros((), device=device)
    for images, labels in batches.epoch(0):
        images, labels = to_device(images, device, cfg.runtime.channels_last), labels.to(device)
        with autocast(device, cfg.efficient.precision):
            logits = model(images).float()
        if gaps is not None:
            gaps.append(logit_gaps(logits).cpu())
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == labels[:, None]
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(dim=1).sum())
        total += len(labels)
    correct1, correct5, total, loss_sum = dist.all_reduce_sum([correct1, correct5, total, float(loss_sum)], device)
    return {"val_top1": 100.0 * correct1 / total, "val_top5": 100.0 * correct5 / total,
            "val_loss": float(loss_sum) / total}


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    torch.backends.cudnn.benchmark = not deterministic


def load_teacher(teacher_cfg: RunConfig, weights: Optional[Path], num_classes: int, in_chans: int,
                 device: torch.device) -> nn.Module:
    """The teacher of a distillation run, frozen in eval mode: from its run's final `weights`,
    or, when None, from its config's model.checkpoint or model.pretrained (build_model loads them)."""
    model = build_model(teacher_cfg.model, num_classes, in_chans)
    if weights is not None:
        runs.load_weights(model, weights, f"teacher {teacher_cfg.model.name} for {num_classes} classes")
    return model.to(device).eval().requires_grad_(False)   # the caller sets the student's memory format


def train(cfg: RunConfig, run_dir: Path, teacher_run: Optional[tuple[RunConfig, Path]] = None,
          label: str = "", progress: bool = True, tracker: Optional[Tracker] = None) -> dict:
    """Train one run in `run_dir`, resuming from its checkpoint; returns what final.json holds.

    Args:
        teacher_run: the teacher's config and final weights, when `cfg.distill` is set.
        tracker: receives each batch's lr and loss and each epoch's metrics row (W&B).
    """
    run_dir = Path(run_dir)
    tracker = tracker or Tracker()
    ctx = dist.init(cfg.runtime.device)
    main = dist.is_main()   # only rank 0 writes files and shows progress
    device = pick_device(cfg.runtime.device)
    seed_everything(cfg.seed, cfg.runtime.deterministic)
    data = build_data(cfg.data, cfg.seed, ctx.rank, ctx.world_size)
    model = build_model(cfg.model, data.num_classes, data.in_chans, cfg.efficient.zero_gamma)
    model = model.to(device, memory_format=torch.channels_last if cfg.runtime.channels_last else torch.contiguous_format)
    if cfg.runtime.compile:
        model.compile()   # in place: state_dict keys stay those of the plain model
    optimizer = build_optimizer(model, cfg, device)
    net = dist.wrap_model(model, device, cfg.runtime.sync_bn)   # DDP: gradients averaged over ranks
    model = dist.unwrap(net)   # evaluated and saved
    teacher = None
    if cfg.distill is not None:
        teacher = load_teacher(*teacher_run, data.num_classes, data.in_chans, device)
        teacher = teacher.to(memory_format=torch.channels_last if cfg.runtime.channels_last else torch.contiguous_format)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.efficient.precision == "fp16")
    mix_rng = np.random.default_rng(cfg.seed)

    steps_per_epoch = len(data.train)
    total_steps = cfg.schedule.epochs * steps_per_epoch
    schedule = dict(peak_lr=cfg.peak_lr(), total_steps=total_steps, kind=cfg.schedule.kind,
                    warmup_steps=cfg.schedule.warmup_epochs * steps_per_epoch, gamma=cfg.schedule.gamma,
                    milestones=[m * steps_per_epoch for m in cfg.schedule.milestones])
    start_epoch, train_time_s = 0, 0.0
    if (run_dir / runs.CHECKPOINT).is_file():
        state = runs.load_torch(run_dir / runs.CHECKPOINT)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        mix_rng.bit_generator.state = state["mix_rng"]
        restore_rng(state["rng"])   # Python, NumPy, torch and CUDA generators
        start_epoch, train_time_s = state["epoch"] + 1, state["train_time_s"]
    if main:
        runs.truncate_metrics(run_dir / runs.METRICS, start_epoch)

    bar = tqdm(total=total_steps, initial=start_epoch * steps_per_epoch, desc=label, unit="step",
               disable=not (progress and main), leave=False, dynamic_ncols=True)
    val, guard = {}, LossGuard(device)
    gaps: list = []   # of the last epoch's evaluation, for the report's Fig. 4b
    for epoch in range(start_epoch, cfg.schedule.epochs):
        net.train()
        mixing_on = cfg.mixup is not None and epoch < cfg.schedule.epochs - cfg.mixup.off_epochs
        loss_sum, seen, t0 = torch.zeros((), device=device), 0, time.perf_counter()
        for i, (images, labels) in enumerate(data.train.epoch(epoch)):
            lr = lr_at(epoch * steps_per_epoch + i, **schedule)
            mixing = sample_mixing(len(labels), cfg.mixup.alpha, mix_rng) if mixing_on else None
            loss = train_step(net, optimizer, scaler, images, labels, lr, cfg, data.num_classes, device,
                              mixing, teacher)
            guard.update(loss, epoch * steps_per_epoch + i)
            tracker.log_step(epoch * steps_per_epoch + i, lr, loss)
            loss_sum += loss * len(labels)
            seen += len(labels)
            bar.update()
        guard.check(steps_per_epoch, run_dir / runs.CHECKPOINT)   # a NaN/inf epoch is never saved
        epoch_time_s = time.perf_counter() - t0
        train_time_s += epoch_time_s
        val = evaluate(model, data.val, cfg, device, gaps if epoch == cfg.schedule.epochs - 1 else None)
        loss_sum, seen = dist.all_reduce_sum([float(loss_sum), seen], device)
        row = {"epoch": epoch, "train_loss": float(loss_sum) / seen, "lr": lr, "epoch_time_s": epoch_time_s,
               "images_per_s": seen / epoch_time_s, **val}
        if main:
            runs.append_metrics(run_dir / runs.METRICS, row)
            tracker.log_epoch(row)
            runs.save_torch(run_dir / runs.CHECKPOINT, {
                "model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "mix_rng": mix_rng.bit_generator.state, "rng": capture_rng(),
                "epoch": epoch, "train_time_s": train_time_s})
        bar.set_postfix(epoch=epoch + 1, loss=f"{row['train_loss']:.3f}", top1=f"{val['val_top1']:.1f}")
    bar.close()
    if not val:  # resumed after the last epoch's checkpoint: evaluate the restored weights
        val = evaluate(model, data.val, cfg, device, gaps)
    if main:
        runs.save_torch(run_dir / runs.WEIGHTS, model.state_dict())
        runs.write_npy(run_dir / runs.LOGIT_GAPS, torch.cat(gaps).numpy())
    train_images = cfg.schedule.epochs * steps_per_epoch * cfg.data.global_batch_size
    return {"top1": val["val_top1"], "top5": val["val_top5"], "val_loss": val["val_loss"],
            "epochs": cfg.schedule.epochs, "train_time_s": train_time_s,
            "images_per_s": train_images / train_time_s if train_time_s else None,
            "config_hash": cfg.config_hash(), "num_classes": data.num_classes, "steps_per_epoch": steps_per_epoch}
