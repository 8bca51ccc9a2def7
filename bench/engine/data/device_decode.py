"""`data.decode_on: device`: workers only read the files' bytes; the device decodes each batch
(nvJPEG through `torchvision.io.decode_jpeg` on CUDA, libjpeg-turbo on a CPU), then crops and
flips every image with the draws the worker path makes for the same item.

An item's key is (index, seed), as for `FolderCrops`: its crop and flip are drawn from `seed`
by the workers' own `CropFlip`, so both paths cut the same boxes. Files that are not JPEGs (PNG, ...) and JPEGs
the device decoder refuses (CMYK, corrupt) are decoded on the CPU, image by image; a file that
nothing can read stops with `read_image`'s one line naming it.

torchvision 0.29 deprecates its image decoders in favour of TorchCodec and warns at every call;
`images` silences that one warning (docs/performance.md notes the move).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar, Union

import torch
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms import v2

from bench.engine.data.crops import CropFlip
from bench.engine.data.images import DataError, FolderSamples, is_jpeg, read_image
from bench.errors import first_line


@dataclass
class FolderBytes(FolderSamples):
    """Samples read as undecoded bytes: key (index, seed) → (uint8 (n_bytes,), index, seed, label)."""

    threadsafe: ClassVar[bool] = False

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int, int, int]:
        index, seed = key
        path, label = self.samples[index]
        try:
            return read_file(path), index, seed, label
        except RuntimeError as err:
            raise DataError(f"{path}: unreadable image ({first_line(err)})") from None


def collate_bytes(items: list[tuple[torch.Tensor, int, int, int]]) -> tuple[torch.Tensor, torch.Tensor, list[int], list[int], torch.Tensor]:
    """A batch of `FolderBytes` items: the files' bytes end to end in one uint8 tensor, with the
    (N + 1,) offsets of each file, so that a batch crosses from a worker as one shared block
    (a tensor per file would take a file descriptor each)."""
    data, indices, seeds, labels = zip(*items)
    offsets = torch.tensor([0] + [d.numel() for d in data]).cumsum(0)
    return torch.cat(data), offsets, list(indices), list(seeds), torch.tensor(labels)


def decode_images(data: list[torch.Tensor], paths: list[str], device: torch.device) -> list[torch.Tensor]:
    """Encoded files → (3, H, W) uint8 on `device` each: the JPEGs in one batched `decode_jpeg`
    call, one by one when it refuses the batch, and on the CPU those it refuses alone."""
    images: list = [None] * len(data)
    jpegs = [k for k, d in enumerate(data) if is_jpeg(d)]
    if jpegs:
        try:
            decoded = decode_jpeg([data[k] for k in jpegs], mode=ImageReadMode.RGB, device=device)
        except RuntimeError:   # no partial results: find the ones it refuses
            decoded = [_decode_jpeg_or_none(data[k], device) for k in jpegs]
        for k, image in zip(jpegs, decoded):
            images[k] = image
    return [image if image is not None else read_image(p, d).to(device) for image, d, p in zip(images, data, paths)]


def _decode_jpeg_or_none(data: torch.Tensor, device: torch.device):
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB, device=device)
    except RuntimeError:
        return None


class DeviceDecode:
    """`collate_bytes` batches → (uint8 (N, 3, S, S) on `device`, labels (N,)).

    Args:
        samples: the data set's (path, label) pairs, for the CPU fallback and the error's path.
        transform: the workers' steps of the split with uint8 out (`data.augment_on: device`):
            the training `CropFlip`, whose draws from each item's seed cut the workers' boxes,
            or the evaluation transform (no randomness).
        device: where the images are decoded, cropped and stacked.
    """

    def __init__(self, samples: list[tuple[str, int]], transform: Union[CropFlip, v2.Compose], device: torch.device) -> None:
        self.samples, self.device = samples, device
        if isinstance(transform, CropFlip):
            self.cut: Callable[[torch.Tensor, int], torch.Tensor] = transform.from_tensor
        else:
            self.cut = lambda image, seed: transform(image)

    def __call__(self, flat: torch.Tensor, offsets: torch.Tensor, indices: list[int], seeds: list[int],
                 labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        bounds = offsets.tolist()   # collate_bytes' block back into one tensor per file (views)
        images = decode_images([flat[a:b] for a, b in zip(bounds[:-1], bounds[1:])], [self.samples[i][0] for i in indices], self.device)
        return torch.stack([self.cut(image, seed) for image, seed in zip(images, seeds)]), labels
