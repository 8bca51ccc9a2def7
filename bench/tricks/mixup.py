"""Mixup (Zhang et al. 2018, arXiv:1710.09412; He et al. 2019, Section 5.4)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field

from bench.tricks.mixing import Mixing, MixingConfig


def sample_mixing(batch_size: int, alpha: float, rng: np.random.Generator) -> tuple[float, torch.Tensor]:
    """One λ ~ Beta(α, α) for the whole batch and a random pairing, both from the run's `rng`."""
    lam = float(rng.beta(alpha, alpha))
    return lam, torch.from_numpy(rng.permutation(batch_size))


def mix_batch(images: torch.Tensor, targets: torch.Tensor, lam: float, perm: torch.Tensor):
    """Mixup, Eq. 1 of arXiv:1710.09412: x̂ = λ·x + (1−λ)·x[perm], ŷ = λ·y + (1−λ)·y[perm].

    λ weights the ORIGINAL sample (paper, timm, torchvision); composer's `mixing` is 1 − λ.

    Args:
        images: (N, C, H, W).
        targets: (N, K) target distributions (one-hot or smoothed).
        lam: λ in [0, 1].
        perm: (N,) index of each example's partner.
    """
    return lam * images + (1 - lam) * images[perm], lam * targets + (1 - lam) * targets[perm]


@dataclass(frozen=True)
class Mixup(Mixing):
    def apply(self, images: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return mix_batch(images, targets, self.lam, self.perm)


class MixupConfig(MixingConfig):
    alpha: float = Field(0.2, gt=0.0)    # λ ~ Beta(alpha, alpha)

    def sample(self, batch_size: int, image_hw: tuple[int, int], rng: np.random.Generator) -> Mixup:
        return Mixup(*sample_mixing(batch_size, self.alpha, rng))
