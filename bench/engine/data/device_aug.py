"""The paper's photometric augmentation on whole uint8 batches on the device: colour jitter,
PCA lighting and normalisation, with per-image random factors (Section 2.1).

Workers then only decode, crop and flip, and send uint8 (a quarter of float32's bytes); the
per-image random draws come from one generator per batch, seeded by the run's seed, the epoch
and the batch's index, so a resumed run draws the same numbers.
"""
from __future__ import annotations

import torch

from bench.config import DataConfig

# `data.normalize`: mean and std per RGB channel, of pixels in [0, 1]
NORMALIZE = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
             "paper": ((123.68 / 255, 116.779 / 255, 103.939 / 255), (58.393 / 255, 57.12 / 255, 57.375 / 255))}
# Principal components of ImageNet's RGB pixels (Krizhevsky et al. 2012), for lighting noise.
PCA_EIGVAL = (0.2175, 0.0188, 0.0045)
PCA_EIGVEC = ((-0.5675, 0.7192, 0.4009), (-0.5808, -0.0045, -0.8140), (-0.5836, -0.6948, 0.4203))
GRAY = (0.2989, 0.587, 0.114)   # ITU-R 601 luma, as torchvision's rgb_to_grayscale


def _gray(x: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) → (N, 1, H, W) luma."""
    return torch.tensordot(x, x.new_tensor(GRAY), dims=([1], [0])).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    f = factor.view(-1, 1, 1, 1)
    return (f * x + (1 - f) * other).clamp_(0, 1)


def _rgb_to_hsv(x: torch.Tensor) -> torch.Tensor:
    r, g, b = x.unbind(1)
    v, _ = x.max(1)
    c = v - x.min(1).values
    s = torch.where(v > 0, c / v.clamp(min=1e-12), torch.zeros_like(v))
    cz = c.clamp(min=1e-12)
    h = torch.where(v == r, ((g - b) / cz) % 6, torch.where(v == g, (b - r) / cz + 2, (r - g) / cz + 4))
    h = torch.where(c > 0, h / 6, torch.zeros_like(h))
    return torch.stack((h, s, v), 1)


def _hsv_to_rgb(x: torch.Tensor) -> torch.Tensor:
    h, s, v = x.unbind(1)
    k = torch.stack([(5 + 6 * h) % 6, (3 + 6 * h) % 6, (1 + 6 * h) % 6], 1)   # r, g, b
    return v.unsqueeze(1) - (v * s).unsqueeze(1) * (torch.minimum(k, 4 - k)).clamp(0, 1)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate each image's hue by `shift` (N,) of the colour circle (torchvision's hue_factor)."""
    hsv = _rgb_to_hsv(x)
    hsv[:, 0] = (hsv[:, 0] + shift.view(-1, 1, 1)) % 1.0
    return _hsv_to_rgb(hsv)


def jitter_ops(cfg: DataConfig) -> list[str]:
    """The colour operations of `cfg.color_jitter`, in torchvision's ColorJitter order."""
    if not cfg.color_jitter:
        return []
    return ["brightness", "saturation", "hue"] if cfg.color_jitter_hue else ["brightness", "contrast", "saturation"]


class DeviceAugment:
    """uint8 (N, 3, H, W) batches → normalised float batches, augmented when `train`.

    Per image, as torchvision's ColorJitter: each operation's factor is drawn uniformly from
    [1 − j, 1 + j] (hue: a shift in [−j/2, j/2]) and the operations run in a random order; then
    PCA lighting (α ~ N(0, lighting_std)) and the mean/std of `data.normalize`.
    """

    def __init__(self, cfg: DataConfig, device: torch.device, train: bool = True) -> None:
        self.device, self.train = device, train
        self.ops = jitter_ops(cfg) if train else []
        self.jitter, self.lighting_std = cfg.color_jitter, (cfg.lighting_std if train else 0.0)
        mean, std = NORMALIZE[cfg.normalize]
        self.mean = torch.tensor(mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=device).view(1, 3, 1, 1)
        self.rgb_basis = torch.tensor(PCA_EIGVEC, device=device) * torch.tensor(PCA_EIGVAL, device=device)

    def __call__(self, images: torch.Tensor, seed: int, rank: int = 0, world_size: int = 1) -> torch.Tensor:
        """Args:
            images: (n, 3, H, W) uint8, this rank's share [rank::world_size] of a global batch.
            seed: the global batch's; the draws are made for the whole global batch on the CPU and
                this rank's share is taken, so an image gets the same factors on any launch.
        Returns:
            (n, 3, H, W) float32 on the device, normalised.
        """
        x = images.to(self.device, non_blocking=True).float().div_(255)
        n = x.shape[0]
        g = torch.Generator().manual_seed(seed)
        total, mine = n * world_size, slice(rank, None, world_size)
        if self.ops:
            j = self.jitter
            factors = (torch.rand(len(self.ops), total, generator=g) * 2 * j + (1 - j))[:, mine][:, :n].to(self.device)
            order = torch.rand(total, len(self.ops), generator=g).argsort(1)[mine][:n].to(self.device)
            for pos in range(len(self.ops)):
                if n == 1:   # one image (the worker path, per item): its own order, no gathering
                    k = int(order[0, pos])
                    x = self._apply(self.ops[k], x, factors[k])
                    continue
                for k, op in enumerate(self.ops):
                    idx = (order[:, pos] == k).nonzero().squeeze(1)
                    if len(idx):
                        x[idx] = self._apply(op, x[idx], factors[k, idx])
        if self.lighting_std:
            alpha = (torch.randn(total, 3, generator=g) * self.lighting_std)[mine][:n].to(self.device)
            x += (alpha @ self.rgb_basis.T).view(n, 3, 1, 1)
        return (x - self.mean) / self.std

    def _apply(self, op: str, x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
        if op == "brightness":
            return (x * factor.view(-1, 1, 1, 1)).clamp_(0, 1)
        if op == "contrast":
            return _blend(x, _gray(x).mean(dim=(1, 2, 3), keepdim=True), factor)
        if op == "saturation":
            return _blend(x, _gray(x), factor)
        return adjust_hue(x, (factor - 1) / 2)   # U[1 − j, 1 + j] → a shift in U[−j/2, j/2]
