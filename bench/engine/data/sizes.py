"""What a data config amounts to without loading it: training images per epoch and crop size."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from bench.config import DataConfig
from bench.engine.data import load_digits_arrays, stratified_split

# Training images of the data sets with a fixed split (ILSVRC-2012: 1,281,167).
TRAIN_IMAGES = {"imagenet": 1_281_167, "cifar10": 50_000, "cifar100": 50_000, "fashion_mnist": 60_000}
NATIVE_PX = {"imagenet": 224, "imagefolder": 224, "cifar10": 32, "cifar100": 32, "fashion_mnist": 28, "digits": 8}


def image_px(cfg: DataConfig) -> int:
    """The training crop's side: `image_size`, else the data set's own (224 for photographs)."""
    return cfg.image_size or NATIVE_PX[cfg.dataset]


def dataset_images(cfg: DataConfig) -> Optional[int]:
    """Images in the training split; for an ImageFolder, counted under root/train when it exists
    (None when it does not)."""
    if cfg.dataset in TRAIN_IMAGES:
        return TRAIN_IMAGES[cfg.dataset]
    if cfg.dataset == "digits":
        _, labels = load_digits_arrays()
        return len(stratified_split(labels, cfg.val_fraction)[0])
    train = Path(cfg.root or "", "train")
    if not cfg.root or not train.is_dir():
        return None
    return sum(len(files) for _, _, files in os.walk(train))


def images_per_epoch(cfg: DataConfig, n_images: Optional[int]) -> Optional[int]:
    """Images one epoch trains on: whole global batches (the last partial one is dropped), at
    most `max_train_batches` of them."""
    if n_images is None:
        return None
    batches = n_images // cfg.global_batch_size
    if cfg.max_train_batches is not None:
        batches = min(batches, cfg.max_train_batches)
    return batches * cfg.global_batch_size
