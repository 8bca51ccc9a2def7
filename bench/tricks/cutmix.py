"""CutMix (Yun et al. 2019, arXiv:1905.04899): paste a box of the partner image into each image."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from pydantic import Field

from bench.tricks.mixing import Mixing, MixingConfig


def cutmix_box(lam: float, height: int, width: int, cy: int, cx: int) -> tuple[int, int, int, int]:
    """The box (y0, y1, x0, x1) pasted from the partner, Section 3.1 of arXiv:1905.04899: centred
    at (cy, cx), of size (H·√(1−λ), W·√(1−λ)), clipped to the image."""
    cut_h, cut_w = int(height * math.sqrt(1 - lam)), int(width * math.sqrt(1 - lam))
    y0, y1 = max(cy - cut_h // 2, 0), min(cy + cut_h // 2, height)
    x0, x1 = max(cx - cut_w // 2, 0), min(cx + cut_w // 2, width)
    return y0, y1, x0, x1


def box_lam(box: tuple[int, int, int, int], height: int, width: int) -> float:
    """λ corrected to the pasted area after clipping: 1 − (box area)/(H·W), the original's share."""
    y0, y1, x0, x1 = box
    return 1.0 - (y1 - y0) * (x1 - x0) / (height * width)


def paste_box(images: torch.Tensor, perm: torch.Tensor, box: tuple[int, int, int, int]) -> torch.Tensor:
    """x̃ = M ⊙ x + (1 − M) ⊙ x[perm], M = 0 inside `box`: images (N, C, H, W), a new tensor."""
    y0, y1, x0, x1 = box
    out = images.clone()
    out[:, :, y0:y1, x0:x1] = images[perm][:, :, y0:y1, x0:x1]
    return out


@dataclass(frozen=True)
class CutMix(Mixing):
    box: tuple[int, int, int, int] = (0, 0, 0, 0)

    def mix_images(self, images: torch.Tensor) -> torch.Tensor:
        return paste_box(images, self.perm, self.box)


class CutMixConfig(MixingConfig):
    alpha: float = Field(1.0, gt=0.0)    # λ ~ Beta(alpha, alpha); the CutMix paper uses 1.0

    def sample(self, batch_size: int, image_hw: tuple[int, int], rng: np.random.Generator) -> CutMix:
        """λ ~ Beta(α, α), a uniform box centre and a pairing from `rng`; λ corrected to the box."""
        height, width = image_hw
        lam = float(rng.beta(self.alpha, self.alpha))
        box = cutmix_box(lam, height, width, int(rng.integers(height)), int(rng.integers(width)))
        return CutMix(box_lam(box, height, width), torch.from_numpy(rng.permutation(batch_size)), box)
