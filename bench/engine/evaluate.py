"""Top-1, top-5 and loss on the validation batches; per image, the logit gap (Fig. 4b) and
whether top-1 got it right (the paired test-set noise of two runs, bench.report.contrasts)."""
from __future__ import annotations

import numpy as np
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
             per_image: bool = False) -> dict:
    """Top-1 and top-5 accuracy (%), mean cross-entropy and the images counted, over the validation batches;
    with `per_image`, also `logit_gaps` (float32) and `correct` (bool, top-1 right) of every
    validation image in the data set's order, gathered from every rank."""
    model.eval()
    correct1 = correct5 = total = 0
    loss_sum, gaps, right = torch.zeros((), device=device), [], []
    for images, labels in batches.epoch(0):
        images = to_device(images, device, cfg.runtime.channels_last, weight_dtype(cfg.efficient.precision))
        labels = labels.to(device)
        with autocast(device, cfg.efficient.precision):
            logits = model(images).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == labels[:, None]
        if per_image:
            gaps.append(logit_gaps(logits).cpu().numpy())
            right.append(hits[:, 0].cpu().numpy())
        correct1 += int(hits[:, 0].sum())
        correct5 += int(hits.any(dim=1).sum())
        total += len(labels)
    correct1, correct5, total, loss_sum = dist.all_reduce_sum([correct1, correct5, total, float(loss_sum)], device)
    out = {"val_top1": 100.0 * correct1 / total, "val_top5": 100.0 * correct5 / total,
           "val_loss": float(loss_sum) / total, "val_images": int(total)}
    if per_image:
        out.update(logit_gaps=np.concatenate(dist.gather_batches(gaps)),
                   correct=np.concatenate(dist.gather_batches(right)))
    return out
