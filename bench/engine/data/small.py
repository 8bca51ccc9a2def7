"""CIFAR-10/100 and Fashion-MNIST as in-memory uint8 tensors, read from their published formats."""
from __future__ import annotations

import gzip
import os
import pickle
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from torchvision import datasets

from bench.config.datasets import DATASETS
from bench.engine.data.images import DataError

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"   # Debian's dataset-fashion-mnist package
FASHION_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                 "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
FASHION_URL = "https://github.com/zalandoresearch/fashion-mnist"


def _presence_only(cls):
    """torchvision's CIFAR class with its md5 checks reduced to presence checks, so that any
    batches in the published pickle format load; downloads still verify the archive's md5."""
    return type(f"Any{cls.__name__}", (cls,), {
        "train_list": [[name, None] for name, _ in cls.train_list],
        "test_list": [[name, None] for name, _ in cls.test_list],
        "meta": {**cls.meta, "md5": None}})


CIFAR_CLASSES = {"cifar10": _presence_only(datasets.CIFAR10), "cifar100": _presence_only(datasets.CIFAR100)}


def load_cifar(name: str, root: Optional[str], download: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images (N, 3, 32, 32) uint8, train labels, val images, val labels)."""
    cls = CIFAR_CLASSES[name]
    root = os.path.expanduser(root or "data")
    folder = Path(root) / cls.base_folder
    pretty = DATASETS[name].title
    if not download and not all((folder / f).is_file() for f, _ in cls.train_list + cls.test_list):
        raise DataError(f"data.root = {root}: no {pretty} batches in {folder}; add --set data.download=true "
                        f"(needs internet) or unpack the python version from {CIFAR_URL} into {root}")
    splits = []
    for train in (True, False):
        try:
            ds = cls(root, train=train, download=download and train)
        except (OSError, RuntimeError) as err:   # URLError is an OSError
            if download and not folder.is_dir():
                raise DataError(f"{pretty}: download into {root} failed ({err}); without internet, unpack "
                                f"the python version from {CIFAR_URL} into {root}") from None
            raise DataError(f"{folder}: unreadable {pretty} batches ({err})") from None
        except (pickle.UnpicklingError, EOFError, KeyError, ValueError) as err:
            raise DataError(f"{folder}: unreadable {pretty} batches ({type(err).__name__}: {err})") from None
        splits += [torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)]
    return tuple(splits)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format), gzipped or not: magic 0 0 0x08 ndim, big-endian dims, uint8."""
    try:
        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "rb") as f:
            blob = f.read()
    except (OSError, EOFError) as err:
        raise DataError(f"{path}: unreadable IDX file ({err})") from None
    if len(blob) < 4 or blob[:3] != b"\x00\x00\x08":
        raise DataError(f"{path}: not an IDX file of unsigned bytes (magic {blob[:4].hex() or 'missing'})")
    ndim = blob[3]
    dims = tuple(int.from_bytes(blob[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    data = np.frombuffer(blob, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise DataError(f"{path}: {data.size} bytes of data for dimensions {dims}")
    return data.reshape(dims)


def _find_idx(dirs: list[Path], stem: str) -> Optional[Path]:
    for d in dirs:
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def load_fashion_mnist(root: Optional[str], download: bool) -> tuple[torch.Tensor, ...]:
    """(train images (N, 1, 28, 28) uint8, train labels, val images, val labels) from IDX files in
    `root`, `root/FashionMNIST/raw` (torchvision's layout) or Debian's package; else downloaded."""
    base = Path(os.path.expanduser(root or "data"))
    dirs = [base, base / "FashionMNIST" / "raw"] + ([] if root else [Path(DEBIAN_FASHION_MNIST)])
    stems = [s for pair in FASHION_FILES.values() for s in pair]
    found = [_find_idx(dirs, s) for s in stems]
    if None in found and download:
        try:
            datasets.FashionMNIST(str(base), train=True, download=True)
            datasets.FashionMNIST(str(base), train=False, download=True)
        except (OSError, RuntimeError) as err:
            raise DataError(f"Fashion-MNIST: download into {base} failed ({err}); without internet, "
                            f"apt-get install dataset-fashion-mnist or copy the IDX files from {FASHION_URL}") from None
        found = [_find_idx(dirs, s) for s in stems]
    if None in found:
        missing = stems[found.index(None)]
        raise DataError(f"Fashion-MNIST: no {missing}[.gz] in {', '.join(map(str, dirs))}; apt-get install "
                        f"dataset-fashion-mnist, copy the IDX files from {FASHION_URL}, or --set data.download=true")
    arrays = [read_idx(p) for p in found]
    out = []
    for (images, labels), (ipath, lpath) in zip(zip(arrays[::2], arrays[1::2]), zip(found[::2], found[1::2])):
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise DataError(f"{ipath}, {lpath}: shapes {images.shape} and {labels.shape} are not N×H×W images and N labels")
        out += [torch.from_numpy(images.copy()).unsqueeze(1), torch.from_numpy(labels.astype(np.int64))]
    return tuple(out)
