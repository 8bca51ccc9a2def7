"""The training loss: every trick meets here, in one fixed, visible order."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from bench.config import RunConfig
from bench.tricks import Mixing, combine_distill, distill_loss, smooth_targets, soft_cross_entropy, soft_target_entropy


def training_loss(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, cfg: RunConfig,
                  num_classes: int, mixing: Optional[Mixing] = None,
                  teacher: Optional[nn.Module] = None,
                  terms: Optional[dict[str, torch.Tensor]] = None) -> torch.Tensor:
    """The loss of one batch, tricks in a fixed order: one-hot → smooth → mix → soft CE,
    plus the distillation term from the teacher on the same (mixed) images (Eq. 6).

    Args:
        images: (N, C, H, W); labels: (N,) class indices.
        mixing: this batch's mixing (mixup, CutMix) when a mixing trick is on.
        teacher: an eval-mode model when `cfg.distill` is set.
        terms: when given (with distillation), receives the loss's parts for display, detached
            and unweighted: `hard`, the cross-entropy with the targets, and `kd_kl`, the soft
            term minus T² × the teacher's entropy (T²·KL, 0 where the student agrees with the
            teacher). The returned loss is computed exactly as without it.
    """
    if cfg.label_smoothing is not None:
        targets = smooth_targets(labels, num_classes, cfg.label_smoothing.eps, cfg.label_smoothing.form)
    else:
        targets = F.one_hot(labels, num_classes).float()
    if mixing is not None:
        images, targets = mixing.apply(images, targets)
    logits = model(images)
    loss = soft_cross_entropy(logits, targets)
    if cfg.distill is not None:
        with torch.inference_mode():   # no autograd bookkeeping for the frozen teacher
            teacher_logits = teacher(images)
        teacher_logits = teacher_logits.clone()   # an ordinary tensor again, usable under autograd
        soft = distill_loss(logits, teacher_logits, cfg.distill.temperature)
        if terms is not None:
            with torch.no_grad():
                terms["hard"] = loss.detach()
                terms["kd_kl"] = soft.detach() - soft_target_entropy(teacher_logits, cfg.distill.temperature)
        loss = combine_distill(loss, soft, cfg.distill.hard_weight)
    return loss
