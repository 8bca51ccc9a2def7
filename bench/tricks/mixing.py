"""The per-batch mixing type that batch-mixing tricks (mixup, CutMix) plug into.

A mixing trick has a config (a `MixingConfig`: when it is on, how to draw one batch's mixing
from the run's generator) and a `Mixing` (how that batch's images are combined). The training
loss calls `Mixing.apply` after smoothing and before the forward pass; the loop calls
`MixingConfig.sample` once per batch. A new mixing trick subclasses both and needs no other
change to the loop or the loss.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field

from bench.strict import Strict


def mix_targets(targets: torch.Tensor, lam: float, perm: torch.Tensor) -> torch.Tensor:
    """ŷ = λ·y + (1−λ)·y[perm]: targets (N, K) weighted by each image's share λ of the original."""
    return lam * targets + (1 - lam) * targets[perm]


@dataclass(frozen=True)
class Mixing:
    """One batch's mixing: example i is combined with example `perm[i]`; λ is the original's share.

    Subclasses define `mix_images`; the targets always mix with the same λ (`mix_targets`).
    """

    lam: float
    perm: torch.Tensor   # (N,) index of each example's partner

    def to(self, device: torch.device) -> Mixing:
        return dataclasses.replace(self, perm=self.perm.to(device, non_blocking=True))

    def mix_images(self, images: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, C, H, W) images and (N, K) target distributions, mixed."""
        return self.mix_images(images), mix_targets(targets, self.lam, self.perm)


class MixingConfig(Strict):
    """The config of a batch-mixing trick; at most one is on in a run."""

    off_epochs: int = Field(0, ge=0)   # GluonCV: no mixing during the last `off_epochs` epochs

    def active(self, epoch: int, epochs: int) -> bool:
        return epoch < epochs - self.off_epochs

    def sample(self, batch_size: int, image_hw: tuple[int, int], rng: np.random.Generator) -> Mixing:
        """One batch's mixing, drawn from the run's `rng` (λ, the pairing and anything else)."""
        raise NotImplementedError
