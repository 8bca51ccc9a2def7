"""What a data config amounts to without loading it: training images per epoch."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from bench.config import DataConfig
from bench.config.datasets import DATASETS
from bench.engine.data import load_digits_arrays, stratified_split


def dataset_images(cfg: DataConfig) -> Optional[int]:
    """Images trained on: the training split less its holdout; the digits' share after
    `val_fraction`; an ImageFolder's files under root/train (None when there is none)."""
    known = DATASETS[cfg.dataset].train_images
    if known is not None:
        return known - (cfg.holdout or 0)
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
