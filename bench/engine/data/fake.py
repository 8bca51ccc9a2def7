"""Tiny data sets of random pixels in the real on-disk formats, for smoke runs and tests:
an ImageFolder tree of JPEGs, CIFAR's pickled batches, Fashion-MNIST's gzipped IDX files."""
from __future__ import annotations

import gzip
import pickle
from pathlib import Path

import numpy as np
from PIL import Image


def write_imagefolder(root: Path, classes: int = 4, train_per_class: int = 8, val_per_class: int = 4,
                      seed: int = 0) -> Path:
    """root/{train,val}/nXXXXXXXX/*.JPEG, images of 40-64 px a side with a class-dependent tint."""
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("val", val_per_class)):
        for c in range(classes):
            folder = Path(root, split, f"n{c:08d}")
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                h, w = rng.integers(40, 65, size=2)
                pixels = rng.integers(0, 256, size=(h, w, 3)) // 2 + 32 * (c % 4)
                Image.fromarray(pixels.astype(np.uint8)).save(folder / f"{split}_{c}_{i}.JPEG", quality=85)
    return Path(root)


def write_cifar(root: Path, name: str = "cifar10", per_batch: int = 20, seed: int = 0) -> Path:
    """The python version's pickled batches (dicts of 'data' (N, 3072) uint8 and labels)."""
    rng = np.random.default_rng(seed)
    if name == "cifar10":
        folder, files, label_key = Path(root, "cifar-10-batches-py"), [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "labels"
        meta, classes = ("batches.meta", "label_names"), 10
    else:
        folder, files, label_key = Path(root, "cifar-100-python"), ["train", "test"], "fine_labels"
        meta, classes = ("meta", "fine_label_names"), 100
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        batch = {"data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
                 label_key: rng.integers(0, classes, size=per_batch).tolist(), "batch_label": f}
        (folder / f).write_bytes(pickle.dumps(batch, protocol=2))
    (folder / meta[0]).write_bytes(pickle.dumps({meta[1]: [f"class{i}" for i in range(classes)]}, protocol=2))
    return Path(root)


def write_idx(path: Path, array: np.ndarray) -> None:
    """An IDX file of unsigned bytes, gzipped when `path` ends in .gz."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    blob = header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()
    Path(path).write_bytes(gzip.compress(blob) if str(path).endswith(".gz") else blob)


def write_fashion_mnist(root: Path, n_train: int = 64, n_test: int = 32, seed: int = 0) -> Path:
    """train-images-idx3-ubyte.gz etc. with 28×28 images and labels 0-9, as Debian ships them."""
    rng = np.random.default_rng(seed)
    Path(root).mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(Path(root, f"{prefix}-images-idx3-ubyte.gz"), rng.integers(0, 256, size=(n, 28, 28)))
        write_idx(Path(root, f"{prefix}-labels-idx1-ubyte.gz"), rng.integers(0, 10, size=n))
    return Path(root)


def write_fake_data(root: Path) -> dict[str, Path]:
    """All formats under `root`: the data.root of each data set (set IMAGENET_ROOT, CIFAR_ROOT and
    FASHION_MNIST_ROOT to these to smoke-test every recipe)."""
    root = Path(root)
    paths = {"imagenet": write_imagefolder(root / "imagenet"), "cifar": root / "cifar",
             "fashion_mnist": write_fashion_mnist(root / "fashion_mnist")}
    write_cifar(paths["cifar"], "cifar10")
    write_cifar(paths["cifar"], "cifar100", per_batch=60)
    return paths
