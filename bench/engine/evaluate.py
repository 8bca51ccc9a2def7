"""Top-1, top-5 and loss on the validation batches; the logit gaps of Fig. 4b."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from bench.config import RunConfig
from bench.engine import distributed as dist
from bench.engine.step import autocast, to_device
from bench.tricks import weight_dtype


def logit_gaps(logits: torch.Tensor) -> torch.Tensor:
    """(N, K) logits → (N,): the max logit minus the mean of the other K − 1 (paper Fig. 4b)."""
    top = logits.max(dim=1).values
    return top - (logits.sum(dim=1) - top) / (logits.shape[1] - 1)


@torch.no_grad()
def evaluate(model: nn.Module, batches, cfg: RunConfig, device: torch.device,
             gaps: Optional[list] = None) -> dict:
    """Top-1 and top-5 accuracy (%), mean cross-entropy and the images counted, over the validation batches;
    with a `gaps` list, also appends each batch's `logit_gaps` (on the CPU) to it."""
    model.eval()
    correct1 = correct5 = total = 0
    loss_sum = torch.zeros((), device=device)
    for images, labels in batches.epoch(0):
        images = to_device(images, device, cfg.runtime.channels_last, weight_dtype(cfg.efficient.precision))
        labels = labels.to(device)
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
            "val_loss": float(loss_sum) / total, "val_images": int(total)}
