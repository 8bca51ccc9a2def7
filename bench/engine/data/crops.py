"""The workers' part of the ImageFolder training pipeline: the paper's random resized crop and
flip (Section 2.1), cut from the decoded file into a uint8 (3, S, S) tensor, and, on the worker
path (`data.augment_on: worker`), the rest of the augmentation per image (`DeviceAugment` on the
CPU); on the device path the device does that rest for the whole batch.

Every draw of an item comes from its own generator, seeded by (run seed, epoch, index): no global
generator, no lock, so in-process loading (`data.workers: 0`) cuts a batch's items on several
threads, and any number of workers or threads gives the same batches. The device cuts the same
boxes (`from_tensor`, for `data.decode_on: device`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torchvision.transforms import v2

from bench.config import DataConfig
from bench.engine.data.device_aug import DeviceAugment
from bench.engine.data.images import FolderSamples, read_image


@dataclass(frozen=True)
class Crop:
    """A box of the full-size image (pixels) and whether the cut is mirrored."""
    top: int
    left: int
    height: int
    width: int
    flip: bool


def random_resized_box(height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float],
                       g: torch.Generator) -> tuple[int, int, int, int]:
    """(top, left, h, w): the Inception crop of an H × W image (Szegedy et al. 2015, as the paper's
    Section 2.1 uses it). A box of a U(scale) fraction of the area with an aspect ratio w/h drawn
    log-uniformly from `ratio`, placed uniformly, tried up to 10 times; where none fits, the largest
    centred box with its ratio clipped to `ratio`."""
    lo, hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        area = height * width * (scale[0] + (scale[1] - scale[0]) * float(torch.rand(1, generator=g)))
        aspect = math.exp(lo + (hi - lo) * float(torch.rand(1, generator=g)))
        w, h = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(height - h + 1, (1,), generator=g))
            return top, int(torch.randint(width - w + 1, (1,), generator=g)), h, w
    aspect = min(max(width / height, ratio[0]), ratio[1])
    w, h = (width, round(width / aspect)) if width / height <= aspect else (round(height * aspect), height)
    return (height - h) // 2, (width - w) // 2, h, w


class CropFlip:
    """Random resized crop to `size` (area fraction `scale`, aspect `ratio`) and, with `hflip`,
    a horizontal flip with probability 1/2."""

    def __init__(self, size: int, scale: tuple[float, float], ratio: tuple[float, float], hflip: bool = True) -> None:
        self.size, self.scale, self.ratio, self.hflip = size, scale, ratio, hflip

    @classmethod
    def from_config(cls, cfg: DataConfig, size: int) -> CropFlip:
        return cls(size, cfg.crop_scale, cfg.crop_ratio, cfg.hflip)

    def draw(self, image: torch.Tensor, seed: int) -> Crop:
        """The crop of a (C, H, W) `image` (only its size is read) for the item seeded by `seed`."""
        g = torch.Generator().manual_seed(seed)
        top, left, h, w = random_resized_box(image.shape[-2], image.shape[-1], self.scale, self.ratio, g)
        return Crop(top, left, h, w, self.hflip and bool(torch.rand(1, generator=g) < 0.5))

    def from_file(self, path: str, seed: int) -> torch.Tensor:
        """uint8 (3, S, S): the item's cut of the image file at `path`, decoded for it."""
        return self.from_tensor(read_image(path), seed)

    def from_tensor(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        """The cut of a decoded (3, H, W) uint8 tensor, on its device."""
        return self._cut(image, self.draw(image, seed))

    def _cut(self, image: torch.Tensor, crop: Crop) -> torch.Tensor:
        """torchvision's uint8 antialiased resize of the box (the v2 pipeline's; faster than PIL's,
        docs/performance.md), mirrored where drawn."""
        out = v2.functional.resized_crop(image, crop.top, crop.left, crop.height, crop.width, [self.size] * 2,
                                         antialias=True)
        return out.flip(-1) if crop.flip else out


@dataclass
class FolderCrops(FolderSamples):
    """Samples cut by `CropFlip`: key (index, seed) → (uint8 (3, S, S), label); with `augment`
    (the worker path), the rest of the augmentation too → normalised float32."""

    crop: CropFlip
    augment: Optional[DeviceAugment] = None

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key
        path, label = self.samples[index]
        cut = self.crop.from_file(path, seed)
        return (cut if self.augment is None else self.augment(cut[None], seed)[0]), label
