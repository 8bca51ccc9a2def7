"""ImageFolder trees (ImageNet's ILSVRC layout or any user set): the paper's transforms and a
DataLoader with the batch interface of `bench.engine.data.Batches`."""
from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Optional

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, default_collate
from torchvision.datasets.folder import IMG_EXTENSIONS, find_classes, make_dataset
from torchvision.io import ImageReadMode, decode_jpeg, read_file
from torchvision.transforms import v2

from bench.engine.data.device_aug import NORMALIZE, DeviceAugment
from bench.errors import BenchError, first_line

# torchvision 0.29 deprecates its image decoders in favour of TorchCodec and warns at every call
# (docs/performance.md notes the move); one filter, set once: `warnings.catch_warnings` around
# each call is not thread-safe, and in-process loading decodes on several threads
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)
JPEG_MAGIC = b"\xff\xd8\xff"   # SOI and the first marker's prefix
LAYOUT = "DIR/train/<class>/*.JPEG and DIR/val/<class>/*.JPEG (ILSVRC with val sorted into class folders)"


class DataError(BenchError):
    """A data problem; re-raised from a DataLoader worker it keeps only its own message line."""

    def __init__(self, message: str) -> None:
        if message.startswith("Caught "):   # the worker's traceback text: keep the last line
            message = message.rstrip().splitlines()[-1].partition(": ")[2]
        super().__init__(message)


def eval_transform(size: int, resize: int, to_float: bool = True, normalize: str = "imagenet") -> v2.Compose:
    """A `read_image` tensor's shorter side to `resize`, center crop `size` (224 ← 256; Inception-V3: 299 ← 342), then
    the mean/std of `normalize` (or uint8 out, `to_float=False`, for `DeviceAugment`)."""
    steps = [v2.Resize(resize, antialias=True), v2.CenterCrop(size)]
    if to_float:
        steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(*NORMALIZE[normalize])]
    return v2.Compose(steps)


def is_jpeg(data: torch.Tensor) -> bool:
    return data.numel() > 3 and bytes(data[:3].tolist()) == JPEG_MAGIC


def decode_jpeg_rgb(data: torch.Tensor) -> Optional[torch.Tensor]:
    """uint8 (3, H, W) of a colour or grayscale JPEG's bytes, decoded by torchvision's
    libjpeg-turbo: PIL's pixels for the file after its RGB conversion, in `pil_to_tensor`'s
    layout. None for a CMYK JPEG (PIL converts it differently) and for bytes libjpeg refuses."""
    try:
        image = decode_jpeg(data, mode=ImageReadMode.UNCHANGED)
    except RuntimeError:
        return None
    if image.shape[0] == 1:   # PIL's RGB conversion repeats the gray channel
        return image.expand(3, -1, -1).permute(1, 2, 0).contiguous().permute(2, 0, 1)
    return image if image.shape[0] == 3 else None


def read_image(path: str, data: Optional[torch.Tensor] = None) -> torch.Tensor:
    """uint8 (3, H, W) of an image file in RGB (`data`: its bytes, where already read): JPEGs
    through `decode_jpeg_rgb` (no PIL image made), any other
    file, or a JPEG it refuses, through PIL, whose error names what is wrong."""
    if data is None:
        try:
            data = read_file(path)
        except RuntimeError:
            pass
    image = decode_jpeg_rgb(data) if data is not None and is_jpeg(data) else None
    if image is not None:
        return image
    try:
        with Image.open(path) as img:
            return v2.functional.pil_to_tensor(img.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"{path}: unreadable image ({err})") from None


@dataclass
class FolderSamples(Dataset):
    """(path, label) samples of an image folder, an item's key (index, seed). Items that are
    thread-safe let in-process loading (`data.workers: 0`) read a batch on several threads."""

    samples: list[tuple[str, int]]
    threadsafe: ClassVar[bool] = True

    def __len__(self) -> int:
        return len(self.samples)


@dataclass
class FolderImages(FolderSamples):
    """Samples put through a transform without randomness (evaluation): key → (image, label), the seed unused."""

    transform: Callable[[torch.Tensor], torch.Tensor]

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        path, label = self.samples[key[0]]
        return self.transform(read_image(path)), label


class _Batches:
    """A batch sampler whose batches are set before each pass (persistent workers reuse it)."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[int, int]]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class LoaderBatches:
    """Batches of a `FolderImages` set through a DataLoader: `len()` and `.epoch(e)` as in
    `TensorBatches`, the same per-(seed, epoch) order and the same share per rank. With `decode`
    (`data.decode_on: device`) the workers' batches, made by `collate_fn`, are encoded files that
    `decode` turns into uint8 (images, labels) on the device before `augment`. Without workers,
    a set whose items are thread-safe (`dataset.threadsafe`) is read on as many threads as the
    process has intra-op threads, between training steps: the same items, all cores."""

    def __init__(self, dataset: Dataset, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                 rank: int = 0, world_size: int = 1, max_batches: Optional[int] = None, workers: int = 0,
                 pin_memory: bool = False, augment: Optional[DeviceAugment] = None,
                 collate_fn: Optional[Callable] = None, decode: Optional[Callable] = None) -> None:
        assert decode is None or augment is not None, "decoded batches are uint8: they need `augment`"
        self.dataset, self.batch_size, self.shuffle, self.seed = dataset, batch_size, shuffle, seed
        self.rank, self.world_size, self.max_batches, self.augment = rank, world_size, max_batches, augment
        self.decode = decode
        self._sampler = _Batches()
        self._pool: Optional[ThreadPoolExecutor] = None
        self._pool_threads = 0
        self._threaded = workers == 0 and getattr(dataset, "threadsafe", False)
        self._collate = collate_fn or default_collate
        self._pin = pin_memory and torch.cuda.is_available()
        self._loader = DataLoader(dataset, batch_sampler=self._sampler, num_workers=workers, collate_fn=collate_fn,
                                  pin_memory=self._pin,
                                  persistent_workers=workers > 0)

    def __len__(self) -> int:
        n = len(self.dataset)
        n = n // self.batch_size if self.shuffle else -(-n // self.batch_size)
        return min(n, self.max_batches) if self.max_batches else n

    def epoch(self, epoch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of `epoch` from batch `start` on; the ones before it are never loaded."""
        n = len(self.dataset)
        # independent streams of (run seed, epoch), numpy's SeedSequence: the order, each item's draws, each batch's
        order_seed, item_seeds, batch_seeds = (np.random.SeedSequence([self.seed, epoch, stream]).generate_state(size)
                                               for stream, size in enumerate((1, n, len(self))))
        g = torch.Generator().manual_seed(int(order_seed[0]))
        order = torch.randperm(n, generator=g) if self.shuffle else torch.arange(n)
        self._sampler.batches = [
            [(int(i), int(item_seeds[i])) for i in order[b * self.batch_size:(b + 1) * self.batch_size][self.rank::self.world_size]]
            for b in range(start, len(self))]
        batches = self._in_threads() if self._threaded else self._loader
        if self.augment is None:
            yield from batches   # a worker's DataError arrives as one line (DataError.__init__)
            return
        for b, batch in enumerate(batches, start=start):   # uint8 (or encoded files) from the workers
            images, labels = self.decode(*batch) if self.decode is not None else batch
            yield self.augment(images, int(batch_seeds[b]), self.rank, self.world_size), labels

    def _in_threads(self) -> Iterator:
        threads = torch.get_num_threads()
        if self._pool is None or self._pool_threads != threads:
            if self._pool is not None:
                self._pool.shutdown()
            self._pool, self._pool_threads = loader_pool(threads), threads
        for keys in self._sampler.batches:
            batch = self._collate(list(self._pool.map(self.dataset.__getitem__, keys)))
            yield pin(batch) if self._pin else batch


def loader_pool(threads: int) -> ThreadPoolExecutor:
    """`threads` loading threads whose own tensor ops run on one intra-op thread each: an op in a
    thread otherwise opens an OpenMP team of the process's intra-op count, and its spinning
    helpers crowd out the decoding and then the training step. The process's count stays."""
    before = torch.get_num_threads()
    pool, started = ThreadPoolExecutor(threads, thread_name_prefix="bench-loader"), threading.Barrier(threads)

    def one_intra_op_thread(_) -> None:
        torch.get_num_threads()   # this thread's lazy intra-op setup first, so that the 1 below stays
        torch.set_num_threads(1)
        started.wait()            # every task on its own thread
    list(pool.map(one_intra_op_thread, range(threads)))
    torch.set_num_threads(before)   # the count new threads take, which the calls above set to 1
    return pool


def pin(batch):
    """A collated batch with its tensors in page-locked memory (for non-blocking copies)."""
    if isinstance(batch, torch.Tensor):
        return batch.pin_memory()
    return type(batch)(pin(x) for x in batch) if isinstance(batch, (tuple, list)) else batch


def _class_folders(split_dir: Path) -> list[str]:
    try:
        return find_classes(str(split_dir))[0]
    except FileNotFoundError:
        raise DataError(f"{split_dir}: no class folders; expected {LAYOUT}") from None


def _samples(split_dir: Path, class_to_idx: dict[str, int]) -> list[tuple[str, int]]:
    try:
        return make_dataset(str(split_dir), class_to_idx, extensions=IMG_EXTENSIONS)
    except FileNotFoundError as err:
        raise DataError(f"{split_dir}: {first_line(err)}") from None


def scan_split(split_dir: Path) -> tuple[list[str], list[tuple[str, int]]]:
    """Class folders and (path, label) samples of one split directory (DIR/<class>/*)."""
    classes = _class_folders(split_dir)
    return classes, _samples(split_dir, {c: i for i, c in enumerate(classes)})


def scan_imagefolder(root: Optional[str], dataset: str) -> tuple[list[str], list, list]:
    """Classes and (path, label) samples of root/train and root/val, checked to match."""
    if root is None:
        hint = "set IMAGENET_ROOT or " if dataset == "imagenet" else ""
        raise DataError(f"data.root is not set for {dataset}: {hint}--set data.root=DIR with {LAYOUT}")
    root_dir = Path(os.path.expanduser(root))
    for split in ("train", "val"):
        if not (root_dir / split).is_dir():
            raise DataError(f"data.root = {root}: no directory {root_dir / split}; expected {LAYOUT}")
    train_classes, val_classes = _class_folders(root_dir / "train"), _class_folders(root_dir / "val")
    if train_classes != val_classes:
        only_train = sorted(set(train_classes) - set(val_classes))[:3]
        only_val = sorted(set(val_classes) - set(train_classes))[:3]
        raise DataError(f"data.root = {root}: class folders differ between train and val "
                        f"(only in train: {', '.join(only_train) or '-'}; only in val: {', '.join(only_val) or '-'})")
    class_to_idx = {c: i for i, c in enumerate(train_classes)}
    return train_classes, _samples(root_dir / "train", class_to_idx), _samples(root_dir / "val", class_to_idx)
