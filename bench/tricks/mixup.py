"""Mixup (Zhang et al. 2018, arXiv:1710.09412; He et al. 2019, Section 5.4)."""
from __future__ import annotations

import numpy as np
import torch
from pydantic import Field

from bench.schema import Strict


class MixupConfig(Strict):
    alpha: float = Field(0.2, gt=0.0)    # λ ~ Beta(alpha, alpha)
    off_epochs: int = Field(0, ge=0)     # GluonCV: no mixing during the last `off_epochs` epochs


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
