"""One optimizer step: device placement, autocast, the loss, the scaler, fused SGD."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from bench.config import RunConfig
from bench.engine.loss import training_loss
from bench.tricks import Mixing, autocast_dtype, param_groups, weight_dtype


def autocast(device: torch.device, precision: str):
    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def to_device(x: torch.Tensor, device: torch.device, channels_last: bool, dtype: Optional[torch.dtype] = None) -> torch.Tensor:
    """`x` on `device` (floating point in `dtype` when given), channels-last for 4-D images when asked."""
    x = x.to(device, dtype=dtype if dtype is not None and x.is_floating_point() else None, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.ndim == 4 else x


def build_optimizer(model: nn.Module, cfg: RunConfig, device: torch.device) -> torch.optim.Optimizer:
    """Nesterov SGD over the recipe's param groups, the lr set per step by the loop.

    One fused kernel for all parameters where PyTorch has it (CUDA, CPU), else the multi-tensor
    (foreach) path: the same update as the per-parameter loop, fewer kernel launches. Not the
    fused CPU kernel under fp16's gradient scaler: it applies steps whose gradients overflowed
    (torch 2.14), turning the weights into inf where the scaler should have skipped the step.
    """
    groups = param_groups(model, cfg.optim.weight_decay, cfg.efficient.no_bias_decay)
    scaled_on_cpu = device.type == "cpu" and cfg.efficient.precision == "fp16"
    fast = {"fused": True} if device.type in ("cuda", "cpu") and not scaled_on_cpu else {"foreach": True}
    return torch.optim.SGD(groups, lr=0.0, momentum=cfg.optim.momentum, nesterov=cfg.optim.nesterov, **fast)


@dataclass(frozen=True)
class Step:
    """What every optimizer step of a run uses: the network the step calls (DDP-wrapped under
    torchrun / SLURM), its optimizer and gradient scaler, the config, the class count, the device
    and, for distillation, the frozen teacher."""

    net: nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    cfg: RunConfig
    num_classes: int
    device: torch.device
    teacher: Optional[nn.Module] = None

    def __call__(self, images: torch.Tensor, labels: torch.Tensor, lr: float, mixing: Optional[Mixing] = None,
                 terms: Optional[dict[str, torch.Tensor]] = None) -> torch.Tensor:
        """One optimizer step on one batch; returns the detached loss without a device sync.

        Args:
            images: (N, C, H, W) and labels: (N,) as the loader gives them (moved to the device here).
            lr: this step's learning rate, from the run's schedule.
            mixing: this batch's mixing (mixup, CutMix), drawn by the loop.
            terms: filled by `training_loss` with the loss's parts for display (distillation).
        """
        cfg, device = self.cfg, self.device
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        images = to_device(images, device, cfg.runtime.channels_last, weight_dtype(cfg.efficient.precision))
        labels = labels.to(device, non_blocking=True)
        if mixing is not None:
            mixing = mixing.to(device)
        with autocast(device, cfg.efficient.precision):
            loss = training_loss(self.net, images, labels, cfg, self.num_classes, mixing, self.teacher, terms=terms)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return loss.detach()
