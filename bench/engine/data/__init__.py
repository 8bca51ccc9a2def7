"""Data sets as batch iterators with a deterministic order per (seed, epoch): the embedded
digits, CIFAR-10/100 and Fashion-MNIST (`small`), ImageFolder trees (`images`)."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Optional, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from bench.config import DataConfig
from bench.config.datasets import DATASETS
from bench.engine.data.crops import CropFlip, FolderCrops
from bench.engine.data.device_aug import DeviceAugment
from bench.engine.data.device_decode import DeviceDecode, FolderBytes, collate_bytes
from bench.engine.data.images import FolderImages, LoaderBatches, eval_transform, scan_imagefolder
from bench.engine.data.small import load_cifar, load_fashion_mnist
from bench.engine.runtime import resolve_workers
from bench.errors import BenchError

SPLIT_SEED = 20190101  # fixes the train/val split, independently of the run's seed


@dataclass
class TensorBatches:
    """Batches of an in-memory (images, labels) set.

    The order of epoch e is a permutation drawn from (seed, e), so a resumed run sees exactly
    the batches an uninterrupted one would. With `world_size` > 1 each rank takes its share of
    every global batch.

    Args:
        images: (N, C, H, W) float, normalized.
        labels: (N,) int64.
        batch_size: global batch size.
        shuffle: draw a new order each epoch (training) or keep the stored order.
        shift_px: random translation by up to this many pixels (training augmentation).
        max_batches: stop each epoch after this many batches.
        mean, std: (C, 1, 1); when set, `images` are stored raw (uint8) and normalized per batch.
        flip: random horizontal flip (training augmentation).
    """

    images: torch.Tensor
    labels: torch.Tensor
    batch_size: int
    shuffle: bool = False
    shift_px: int = 0
    max_batches: Optional[int] = None
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    mean: Optional[torch.Tensor] = None
    std: Optional[torch.Tensor] = None
    flip: bool = False

    def __len__(self) -> int:
        n = len(self.labels) // self.batch_size if self.shuffle else -(-len(self.labels) // self.batch_size)
        return min(n, self.max_batches) if self.max_batches else n

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of `epoch` from batch `start` on (a resumed run's data position): the
        batches before it are neither gathered nor augmented, only their random draws repeated."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)   # the committed results' stream: kept
        order = torch.randperm(len(self.labels), generator=g) if self.shuffle else torch.arange(len(self.labels))
        for b in range(len(self)):
            idx = order[b * self.batch_size:(b + 1) * self.batch_size]
            # drawn for the global batch, so any world size sees the same pixels
            shifts = shift_draws(len(idx), self.shift_px, g) if self.shift_px else None
            flipped = torch.rand(len(idx), generator=g) < 0.5 if self.flip else None
            if b < start:
                continue
            images = self.images[idx]
            if self.mean is not None:
                images = (images.float() - self.mean) / self.std
            if shifts is not None:
                images = shift_images(images, self.shift_px, *shifts)
            if flipped is not None:
                images = torch.where(flipped[:, None, None, None], images.flip(3), images)
            yield images[self.rank::self.world_size], self.labels[idx][self.rank::self.world_size]


def shift_draws(n: int, max_px: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(dy, dx), each (n,) in [0, 2·max_px]: the offsets of `shift_images`' crops."""
    return (torch.randint(0, 2 * max_px + 1, (n,), generator=g), torch.randint(0, 2 * max_px + 1, (n,), generator=g))


def shift_images(images: torch.Tensor, max_px: int, dy: torch.Tensor, dx: torch.Tensor) -> torch.Tensor:
    """Translate each image by up to `max_px` pixels (zero padding, then the crop at (dy, dx))."""
    n, _, h, w = images.shape
    padded = F.pad(images, (max_px,) * 4)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    batch = torch.arange(n)[:, None, None, None]
    chans = torch.arange(images.shape[1])[None, :, None, None]
    return padded[batch, chans, rows, cols]


class Batches(Protocol):
    """What training and evaluation read: an epoch's (images, labels) batches in an order fixed
    by (seed, epoch), from batch `start` on (a resumed run's data position). `TensorBatches`,
    `LoaderBatches` (ImageFolder) and the benchmark's synthetic batches are the three kinds."""

    def __len__(self) -> int: ...

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


@dataclass
class Data:
    train: Batches
    val: Batches
    num_classes: int
    in_chans: int
    image_size: int


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled 8×8 digits: (1797, 8, 8) in [0, 16] and labels 0-9."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return bunch.images.astype(np.float32), bunch.target.astype(np.int64)


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a deterministic split that keeps each class's share in train and val."""
    counts = np.unique(labels, return_counts=True)[1]
    return _split_by_class(labels, [max(1, round(n * val_fraction)) for n in counts], seed)


def stratified_holdout(labels: np.ndarray, n_val: int, seed: int = SPLIT_SEED) -> tuple[np.ndarray, np.ndarray]:
    """Indices of a deterministic split with exactly `n_val` validation images, each class's
    count its share of `n_val` rounded by largest remainder."""
    share = np.unique(labels, return_counts=True)[1] * n_val / len(labels)
    take = np.floor(share).astype(int)
    take[np.argsort(-(share - take), kind="stable")[:n_val - take.sum()]] += 1
    return _split_by_class(labels, list(take), seed)


def _split_by_class(labels: np.ndarray, n_val: list[int], seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) indices: `n_val[i]` images of the i-th class (sorted) drawn for val at random."""
    rng = np.random.default_rng(seed)
    train, val = [], []
    for c, k in zip(np.unique(labels), n_val):
        idx = rng.permutation(np.flatnonzero(labels == c))
        val.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(val))


def build_data(cfg: DataConfig, seed: int, rank: int = 0, world_size: int = 1,
               device: torch.device = torch.device("cpu")) -> Data:
    """The data set named by `cfg.dataset`, with its training augmentation; `rank` and
    `world_size` pick this process's share of every global batch."""
    if cfg.global_batch_size % world_size:
        raise BenchError(f"data.global_batch_size = {cfg.global_batch_size} is not divisible by the world size {world_size}")
    if DATASETS[cfg.dataset].photographs:
        return build_imagefolder(cfg, seed, rank, world_size, device)
    if cfg.dataset != "digits":
        return build_small(cfg, seed, rank, world_size)
    images, labels = load_digits_arrays()
    train_idx, val_idx = stratified_split(labels, cfg.val_fraction)
    x = torch.from_numpy(images).unsqueeze(1)
    y = torch.from_numpy(labels)
    mean, std = x[train_idx].mean(), x[train_idx].std()
    x = (x - mean) / std
    _check_batch(cfg, len(train_idx))
    common = dict(seed=seed, rank=rank, world_size=world_size)
    train = TensorBatches(x[train_idx], y[train_idx], cfg.global_batch_size, shuffle=True, shift_px=1,
                          max_batches=cfg.max_train_batches, **common)
    val = TensorBatches(x[val_idx], y[val_idx], cfg.eval_batch_size, max_batches=cfg.max_val_batches, **common)
    spec = DATASETS["digits"]
    return Data(train=train, val=val, num_classes=spec.classes, in_chans=spec.channels, image_size=spec.px)


def _check_batch(cfg: DataConfig, n_train: int) -> None:
    if n_train < cfg.global_batch_size:
        raise BenchError(f"data.global_batch_size = {cfg.global_batch_size} exceeds the {n_train} training images")


def build_small(cfg: DataConfig, seed: int, rank: int, world_size: int) -> Data:
    """CIFAR-10/100 or Fashion-MNIST in memory: pad-and-crop + flip, per-channel train mean/std;
    validated on the test split, or with `holdout` on that many held-out training images."""
    if cfg.dataset == "fashion_mnist":
        x_train, y_train, x_val, y_val = load_fashion_mnist(cfg.root, cfg.download)
    else:
        x_train, y_train, x_val, y_val = load_cifar(cfg.dataset, cfg.root, cfg.download)
    if cfg.holdout is not None:
        if cfg.holdout >= len(y_train):
            raise BenchError(f"data.holdout = {cfg.holdout}: must be below the {len(y_train)} training images of {cfg.dataset}")
        train_idx, val_idx = stratified_holdout(y_train.numpy(), cfg.holdout)
        x_train, y_train, x_val, y_val = x_train[train_idx], y_train[train_idx], x_train[val_idx], y_train[val_idx]
    _check_batch(cfg, len(y_train))
    mean = x_train.float().mean(dim=(0, 2, 3))[:, None, None]
    std = x_train.float().std(dim=(0, 2, 3))[:, None, None].clamp_min(1e-3)
    common = dict(seed=seed, rank=rank, world_size=world_size, mean=mean, std=std)
    train = TensorBatches(x_train, y_train, cfg.global_batch_size, shuffle=True, shift_px=cfg.pad_px,
                          flip=cfg.hflip, max_batches=cfg.max_train_batches, **common)
    val = TensorBatches(x_val, y_val, cfg.eval_batch_size, max_batches=cfg.max_val_batches, **common)
    spec = DATASETS[cfg.dataset]
    return Data(train=train, val=val, num_classes=spec.classes, in_chans=spec.channels, image_size=spec.px)


def _folder_set(cfg: DataConfig, samples: list, transform, device: torch.device) -> dict:
    """The data set of one split for `LoaderBatches`: decoded images from the workers (cut by
    `CropFlip`, or through the eval transform), or (with `decode_on: device`) the files' bytes
    and the decoder that runs on `device`."""
    if cfg.decode_on == "device":
        return dict(dataset=FolderBytes(samples), collate_fn=collate_bytes, decode=DeviceDecode(samples, transform, device))
    if isinstance(transform, CropFlip):
        return dict(dataset=FolderCrops(samples, transform))
    return dict(dataset=FolderImages(samples, transform))


def train_set(cfg: DataConfig, samples: list, size: int, device: torch.device) -> dict:
    """`LoaderBatches`' data set, collation, decoder and device augmentation for the training
    split: the workers crop and flip (`CropFlip`); the colour jitter, lighting and normalisation
    run in the workers per image (`augment_on: worker`) or batched on `device`."""
    crop = CropFlip.from_config(cfg, size)
    if cfg.augment_on != "device":
        return dict(dataset=FolderCrops(samples, crop, augment=DeviceAugment(cfg, torch.device("cpu"))))
    return dict(**_folder_set(cfg, samples, crop, device), augment=DeviceAugment(cfg, device))


def build_imagefolder(cfg: DataConfig, seed: int, rank: int, world_size: int,
                      device: torch.device = torch.device("cpu")) -> Data:
    """root/train and root/val through the paper's train and eval transforms; with
    `decode_on: device` the workers send the files' bytes and `device` decodes, crops and flips."""
    classes, train_samples, val_samples = scan_imagefolder(cfg.root, cfg.dataset)
    _check_batch(cfg, len(train_samples))
    size, resize = cfg.size(), cfg.eval_size()
    loader = dict(seed=seed, rank=rank, world_size=world_size, workers=resolve_workers(cfg.workers, device),
                  pin_memory=cfg.pin_memory)
    on_device = cfg.augment_on == "device"
    train = LoaderBatches(**train_set(cfg, train_samples, size, device), batch_size=cfg.global_batch_size, shuffle=True,
                          max_batches=cfg.max_train_batches, **loader)
    val = LoaderBatches(**_folder_set(cfg, val_samples, eval_transform(size, resize, to_float=not on_device, normalize=cfg.normalize), device),
                        batch_size=cfg.eval_batch_size, max_batches=cfg.max_val_batches,
                        augment=DeviceAugment(cfg, device, train=False) if on_device else None, **loader)
    return Data(train=train, val=val, num_classes=len(classes), in_chans=3, image_size=size)
