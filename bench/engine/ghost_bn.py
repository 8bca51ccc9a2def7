"""Ghost batch norm: training-mode BatchNorm statistics over fixed slices of a device's batch.

The paper normalises over 128 images per GPU (8 GPUs × 128 = 1024). With statistics over the
whole per-device batch, the same recipe is a different model on 1 GPU (1024 images per
statistic) and on 8 (128). With `efficient.bn_batch_size = k`, each device's batch of b images
is cut into g = b/k slices and the model runs on each slice, so every BatchNorm statistic is
taken over k images whatever the number of devices.

Slices are strided (slice s holds images s, s + g, s + 2g, ...), as ranks take their share of a
global batch (rank r holds r, r + W, ...): global image i is normalised with the images
i' ≡ i (mod B/k) on any number of devices, so 1 process with slices of k computes what B/k
ranks of k images compute. Every layer but BatchNorm treats images independently (the CNNs
here), so running the model per slice is exactly BatchNorm per slice.

Running statistics: each slice updates them from the same starting values and the module keeps
their mean. The update is affine, so that mean is also the mean over ranks of per-rank
running statistics (`distributed.average_buffers`): one process and several agree there too.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from bench.errors import BenchError


class GhostBatchNorm(nn.Module):
    """Runs `model` on strided slices of `slice_size` images in training mode; unchanged in eval.

    Not a model of its own: the training step calls it, the plain `model` is what is saved.
    """

    def __init__(self, model: nn.Module, slice_size: int) -> None:
        super().__init__()
        self.model, self.slice_size = model, slice_size
        self.norms = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        if not self.training or n <= self.slice_size:
            return self.model(x)
        if n % self.slice_size:
            raise BenchError(f"efficient.bn_batch_size = {self.slice_size}: does not divide this device's batch of {n} images")
        g = n // self.slice_size
        start = [(m.running_mean, m.running_var, m.num_batches_tracked.clone()) for m in self.norms]
        updated: list[list[tuple[torch.Tensor, torch.Tensor]]] = [[] for _ in self.norms]
        outputs = []
        for s in range(g):
            # each slice updates its own copy of the starting statistics (autograd keeps those it
            # saw, so none is changed in place afterwards)
            for m, (mean, var, count) in zip(self.norms, start):
                m.running_mean, m.running_var = mean.clone(), var.clone()
                m.num_batches_tracked.copy_(count)
            outputs.append(self.model(x[s::g]))
            for m, seen in zip(self.norms, updated):
                seen.append((m.running_mean, m.running_var))
        for m, (mean, var, _), seen in zip(self.norms, start, updated):
            with torch.no_grad():
                mean.copy_(torch.stack([u[0] for u in seen]).mean(0))
                var.copy_(torch.stack([u[1] for u in seen]).mean(0))
            m.running_mean, m.running_var = mean, var   # the module's own buffers again
        # outputs[s][j] is image s + j·g: interleave the slices back into the batch's order
        return torch.stack(outputs, dim=1).flatten(0, 1)
