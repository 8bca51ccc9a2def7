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


@dataclass(frozen=True)
class Mixup(Mixing):
    """Mixup, Eq. 1 of arXiv:1710.09412: x̂ = λ·x + (1−λ)·x[perm], ŷ = λ·y + (1−λ)·y[perm] (the
    targets as every mixing mixes them, `Mixing.apply`).

    λ weights the ORIGINAL sample (paper, timm, torchvision); composer's `mixing` is 1 − λ.
    """

    def mix_images(self, images: torch.Tensor) -> torch.Tensor:
        return self.lam * images + (1 - self.lam) * images[self.perm]


class MixupConfig(MixingConfig):
    alpha: float = Field(0.2, gt=0.0)    # λ ~ Beta(alpha, alpha)

    def sample(self, batch_size: int, image_hw: tuple[int, int], rng: np.random.Generator) -> Mixup:
        return Mixup(*sample_mixing(batch_size, self.alpha, rng))
