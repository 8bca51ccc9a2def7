"""The workers' part of `data.augment_on: device`: the paper's random resized crop and flip,
cut from the decoded file into a uint8 (3, S, S) tensor.

The box and the flip are drawn from the item's seed by torchvision's `RandomResizedCrop` and a
uniform draw, in the order and with the numbers the torchvision v2 pipeline
`[RandomResizedCrop, RandomHorizontalFlip]` draws them on a `read_image` tensor, and the box is
resized by the same antialiased resize: that pipeline's pixels for the same seed, only faster.
The device cuts the same boxes (`from_tensor`, for `data.decode_on: device`).

Items are thread-safe: the draw, the only use of the global generator, holds a lock, so
in-process loading (`data.workers: 0`) can cut a batch's items on several threads.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from bench.config import DataConfig
from bench.engine.data.images import RNG_LOCK, read_image


@dataclass(frozen=True)
class Crop:
    """A box of the full-size image (pixels) and whether the cut is mirrored."""
    top: int
    left: int
    height: int
    width: int
    flip: bool


class CropFlip:
    """Random resized crop to `size` (area fraction `scale`, aspect `ratio`) and, with `hflip`,
    a horizontal flip with probability 1/2."""

    def __init__(self, size: int, scale: tuple[float, float], ratio: tuple[float, float], hflip: bool = True) -> None:
        self.size, self.hflip = size, hflip
        self._box = v2.RandomResizedCrop(size, scale=scale, ratio=ratio, antialias=True)

    @classmethod
    def from_config(cls, cfg: DataConfig, size: int) -> CropFlip:
        return cls(size, cfg.crop_scale, cfg.crop_ratio, cfg.hflip)

    def draw(self, image: Union[Image.Image, torch.Tensor], seed: int) -> Crop:
        """The crop of `image` (only its size is read) for the item seeded by `seed`."""
        with RNG_LOCK, torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            box = self._box.make_params([image])
            flip = self.hflip and bool(torch.rand(1) < 0.5)   # v2.RandomHorizontalFlip's draw, after the box
        return Crop(box["top"], box["left"], box["height"], box["width"], flip)

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


class FolderCrops(Dataset):
    """(path, label) samples cut by `CropFlip`: key (index, seed) → (uint8 (3, S, S), label)."""

    threadsafe = True

    def __init__(self, samples: list[tuple[str, int]], crop: CropFlip) -> None:
        self.samples, self.crop = samples, crop

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        index, seed = key
        path, label = self.samples[index]
        return self.crop.from_file(path, seed), label
