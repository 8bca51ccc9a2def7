"""The workers' part of `data.augment_on: device`: the paper's random resized crop and flip,
cut from the decoded file into a uint8 (3, S, S) tensor.

The box and the flip are drawn from the item's seed by torchvision's `RandomResizedCrop` and a
uniform draw, in the order and with the numbers the torchvision v2 pipeline
`[RandomResizedCrop, RandomHorizontalFlip]` draws them on a `read_image` tensor, and the box is
resized by the same antialiased resize: that pipeline's pixels for the same seed, only faster.
The device cuts the same boxes (`from_tensor`, for `data.decode_on: device`). With
`data.decode_reduced`, a JPEG whose box spans at least twice the output size is decoded by
libjpeg at 1/2, 1/4 or 1/8 scale (DCT scaling, `Image.draft`), never below the output size, and
the box, in fractional pixels of the smaller image, is resized by PIL's antialiased bilinear
filter: the same box, the pixels within about a level of a full decode.

Items are thread-safe: the draw, the only use of the global generator, holds a lock, so
in-process loading (`data.workers: 0`) can cut a batch's items on several threads.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Union

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.transforms import v2

from bench.config import DataConfig
from bench.engine.data.images import RNG_LOCK, DataError, read_image


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
    a horizontal flip with probability 1/2; `reduced`: JPEGs decoded at a reduced scale."""

    def __init__(self, size: int, scale: tuple[float, float], ratio: tuple[float, float], hflip: bool = True,
                 reduced: bool = False) -> None:
        self.size, self.hflip, self.reduced = size, hflip, reduced
        self._box = v2.RandomResizedCrop(size, scale=scale, ratio=ratio, antialias=True)

    @classmethod
    def from_config(cls, cfg: DataConfig, size: int) -> CropFlip:
        return cls(size, cfg.crop_scale, cfg.crop_ratio, cfg.hflip, cfg.decode_reduced)

    def draw(self, image: Union[Image.Image, torch.Tensor], seed: int) -> Crop:
        """The crop of `image` (only its size is read) for the item seeded by `seed`."""
        with RNG_LOCK, torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            box = self._box.make_params([image])
            flip = self.hflip and bool(torch.rand(1) < 0.5)   # v2.RandomHorizontalFlip's draw, after the box
        return Crop(box["top"], box["left"], box["height"], box["width"], flip)

    def from_file(self, path: str, seed: int) -> torch.Tensor:
        """uint8 (3, S, S): the item's cut of the image file at `path`, decoded for it."""
        if not self.reduced:
            return self.from_tensor(read_image(path), seed)
        try:
            with Image.open(path) as image:
                crop = self.draw(image, seed)
                cut = self._reduced(image, crop) if image.format == "JPEG" else None
        except (OSError, ValueError, SyntaxError) as err:
            raise DataError(f"{path}: unreadable image ({err})") from None
        return cut if cut is not None else self._cut(read_image(path), crop)   # the box drawn once

    def from_tensor(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        """The cut of a decoded (3, H, W) uint8 tensor, on its device."""
        return self._cut(image, self.draw(image, seed))

    def _cut(self, image: torch.Tensor, crop: Crop) -> torch.Tensor:
        """torchvision's uint8 antialiased resize of the box (the v2 pipeline's, twice as fast as
        PIL's at 224 px), mirrored where drawn."""
        out = v2.functional.resized_crop(image, crop.top, crop.left, crop.height, crop.width, [self.size] * 2,
                                         antialias=True)
        return out.flip(-1) if crop.flip else out

    def _reduced(self, image: Image.Image, crop: Crop) -> Optional[torch.Tensor]:
        """The cut from an opened JPEG decoded at 1/2, 1/4 or 1/8 scale; None where the box is
        too small for that."""
        width, height = image.size
        at_least = self.size / min(crop.width, crop.height)   # the box, scaled, stays ≥ size on both sides
        image.draft(image.mode, (math.ceil(width * at_least), math.ceil(height * at_least)))
        if image.size == (width, height):
            return None
        # the same box, in fractions of the smaller image's pixels
        sx, sy = image.size[0] / width, image.size[1] / height
        box = (crop.left * sx, crop.top * sy, (crop.left + crop.width) * sx, (crop.top + crop.height) * sy)
        out = np.array(image.convert("RGB").resize((self.size, self.size), Image.Resampling.BILINEAR, box=box))
        out = torch.from_numpy(out).permute(2, 0, 1)
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
