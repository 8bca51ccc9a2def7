"""The data sets a recipe can name, and what is known of each before a file is read: its splits,
native size, class count, image counts, how it is evaluated, and which `data.` keys its pipeline
reads (a key it does not read is refused when set, and left out of the run's records)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

# the `data.` keys every data set reads; any other belongs to the data sets that list it
COMMON_KEYS = frozenset({"dataset", "root", "global_batch_size", "eval_batch_size", "max_train_batches", "max_val_batches"})
SMALL_KEYS = frozenset({"download", "holdout", "pad_px", "hflip"})          # pad, random crop, flip
FOLDER_KEYS = frozenset({"image_size", "eval_resize", "workers", "pin_memory", "augment_on", "decode_on",
                         "crop_scale", "crop_ratio", "color_jitter", "color_jitter_hue", "lighting_std", "normalize",
                         "hflip"})
EVAL_CROP = 0.875   # photographs: the shorter side resized to size / 0.875, then the center crop


@dataclass(frozen=True)
class DataSet:
    name: str
    title: str
    px: int                        # the side of its images (of the training crop for photographs)
    channels: int
    classes: Optional[int]         # None: the class folders of its tree
    train_images: Optional[int]    # the training split before any holdout; None: counted (digits, a tree)
    val_images: Optional[int]      # the split validated on (the test split where there is no other)
    val_split: str                 # what that split is, for the tables' captions ("Top-1 on ...")
    keys: frozenset[str]           # the `data.` keys its pipeline reads beside COMMON_KEYS

    @property
    def photographs(self) -> bool:
        return "crop_scale" in self.keys

    def applies(self, key: str) -> bool:
        return key in COMMON_KEYS or key in self.keys


DATASETS = {d.name: d for d in (
    # scikit-learn's bundled 8×8 digits: 1,797 images, a stratified val_fraction held out; shifted by up to 1 px
    DataSet("digits", "8×8 digits", 8, 1, 10, None, None, "a held-out stratified split (val_fraction)", frozenset({"val_fraction"})),
    DataSet("cifar10", "CIFAR-10", 32, 3, 10, 50_000, 10_000, "the test split", SMALL_KEYS),
    DataSet("cifar100", "CIFAR-100", 32, 3, 100, 50_000, 10_000, "the test split", SMALL_KEYS),
    DataSet("fashion_mnist", "Fashion-MNIST", 28, 1, 10, 60_000, 10_000, "the test split", SMALL_KEYS),
    DataSet("imagenet", "ImageNet (ILSVRC-2012)", 224, 3, 1000, 1_281_167, 50_000, "the validation split", FOLDER_KEYS),
    DataSet("imagefolder", "an image folder", 224, 3, None, None, None, "the val/ folder", FOLDER_KEYS),
)}
