"""Images/s of the ImageFolder training pipeline (JPEG decode, the paper's augmentation, the
DataLoader), against the rate a GPU trains at in the paper.

Each number through the harness's own code: decoding alone (`read_image`), the train transform
alone on decoded images, the batched steps that run on the device (`DeviceAugment`; with
`decode_on: device` also `DeviceDecode`), and whole batches from `LoaderBatches` with 0..N
worker processes (timed after the first batch, so worker start-up is left out), for the three
data paths. A GPU in Table 3 of the paper consumes 1,281,167 / (minutes per epoch × 60) / 8
images per second; dividing by the per-worker rate gives the CPU cores one GPU needs.
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from bench.ablation.preview import table3_rates
from bench.config import DataConfig
from bench.engine.data.crops import CropFlip, FolderCrops
from bench.engine.data.device_aug import DeviceAugment
from bench.engine.data.device_decode import DeviceDecode, FolderBytes, collate_bytes
from bench.engine.data.images import LoaderBatches, read_image, scan_split
from bench.errors import ConfigError
from bench.perf.throughput import sync
from bench.report.frames import load_paper


def write_photo_tree(root: Path, images: int, classes: int = 10, size: tuple[int, int] = (500, 375),
                     quality: int = 90, seed: int = 0) -> Path:
    """root/train/<class>/*.JPEG of ILSVRC's typical size (500×375): smooth random colour
    fields plus mild noise, so that they compress and decode like photographs, not like noise."""
    rng = np.random.default_rng(seed)
    w, h = size
    print(f"writing {images} JPEGs of {w}x{h} px", flush=True)
    for i in range(images):
        folder = Path(root, "train", f"n{i % classes:08d}")
        folder.mkdir(parents=True, exist_ok=True)
        coarse = Image.fromarray(rng.integers(0, 256, size=(6, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        pixels = np.asarray(coarse, dtype=np.int16) + rng.normal(0, 6, size=(h, w, 3)).astype(np.int16)
        Image.fromarray(pixels.clip(0, 255).astype(np.uint8)).save(folder / f"img_{i:06d}.JPEG", quality=quality)
    return Path(root)


def _rate(step: Callable[[], object], seconds: float, per_call: int = 1) -> float:
    """Items per second of `step` (which handles `per_call` items), called for `seconds`."""
    calls, start = 0, time.perf_counter()
    while calls == 0 or time.perf_counter() - start < seconds:
        step()
        calls += 1
    return calls * per_call / (time.perf_counter() - start)


def _endless(batches) -> Iterator:
    """The loader's batches, epoch after epoch."""
    for epoch in itertools.count():
        yield from batches.epoch(epoch)


def _loader_rates(dataset, batch_size: int, workers: Sequence[int], seconds: float, progress, label: str,
                  collate_fn=None) -> dict:
    rates = {}
    for w in workers:
        progress(f"DataLoader, {label} path, {w} worker(s)")
        # shuffled epochs drop the last partial batch: every batch holds batch_size images
        stream = _endless(LoaderBatches(dataset, batch_size, shuffle=True, workers=w, collate_fn=collate_fn))
        next(stream)   # worker start-up and the first batch are not timed
        rates[str(w)] = _rate(lambda s=stream: next(s), seconds, per_call=batch_size)
        stream.close()
    return rates


def _device_rates(samples, cfg: DataConfig, crop: CropFlip, decoded: Iterator, batch_size: int, seconds: float,
                  device: torch.device, progress) -> tuple[float, float]:
    """Images/s of `DeviceAugment` on uint8 batches and of `DeviceDecode` on batches of files."""
    progress(f"the device path's batched augmentation, on {device}")
    batch = torch.stack([crop.from_tensor(next(decoded), seed) for seed in range(batch_size)]).to(device)
    augment = DeviceAugment(cfg, device)
    augment_rate = _rate(lambda: (augment(batch, seed=0), sync(device)), seconds, per_call=batch_size)
    progress(f"the decode-on-device path's batched decode, crop and flip, on {device}")
    files = collate_bytes([FolderBytes(samples)[(i, i)] for i in range(batch_size)])
    decode = DeviceDecode(samples, crop, device)
    return augment_rate, _rate(lambda: (decode(*files), sync(device)), seconds, per_call=batch_size)


def measure_loader(root: Path, *, workers: Sequence[int], batch_size: int, image_size: int, seconds: float,
                   progress: Callable[[str], None] = lambda msg: None, device: Optional[torch.device] = None) -> dict:
    """The three data paths: "worker" (workers decode, crop, flip, jitter, light and normalise,
    sending float32), "device" (workers decode, crop and flip, sending uint8; `DeviceAugment` does
    the rest batched) and "device_decode" (workers only read the files; `DeviceDecode` decodes,
    crops and flips batched). The batched steps are timed on `device` (None: CUDA when there is
    one, else the CPU)."""
    device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfgs = {path: DataConfig(dataset="imagefolder", root=str(root), global_batch_size=batch_size, image_size=image_size,
                             augment_on=path) for path in ("worker", "device")}
    _, samples = scan_split(Path(root, "train"))
    if len(samples) < batch_size:
        raise ConfigError(f"bench-loader {root}: {len(samples)} training images, fewer than one batch of {batch_size}")
    crop = CropFlip.from_config(cfgs["device"], image_size)
    worker = FolderCrops(samples, crop, augment=DeviceAugment(cfgs["worker"], torch.device("cpu")))
    transforms = {"worker": lambda image: worker.augment(crop.from_tensor(image, 0)[None], 0)[0],
                  "device": lambda image: crop.from_tensor(image, 0)}
    paths = itertools.cycle([p for p, _ in samples])

    threads = torch.get_num_threads()
    torch.set_num_threads(1)   # per core, as in a DataLoader worker
    try:
        progress("decoding alone, one thread")
        decode = _rate(lambda: read_image(next(paths)), seconds)
        decoded = itertools.cycle([read_image(next(paths)) for _ in range(32)])
        augment = {}
        for path, transform in transforms.items():
            progress(f"the {path} path's train transform alone, one thread")
            augment[path] = _rate(lambda t=transform: t(next(decoded)), seconds)
    finally:
        torch.set_num_threads(threads)
    on_device, decode_on_device = _device_rates(samples, cfgs["device"], crop, decoded, batch_size, seconds, device,
                                                progress)
    sets = {"worker": (worker, None), "device": (FolderCrops(samples, crop), None)}
    sets["device_decode"] = (FolderBytes(samples), collate_bytes)   # the workers only read the files
    loader = {path: _loader_rates(dataset, batch_size, workers, seconds, progress, path, collate)
              for path, (dataset, collate) in sets.items()}
    per_worker = {path: {w: ips / max(int(w), 1) for w, ips in rates.items()} for path, rates in loader.items()}
    paper = {r.model: r.images_per_s for r in table3_rates(load_paper("table3")) if r.precision == "fp16"}   # the efficient rows
    cores = {}
    for path, rates in per_worker.items():
        # cores per GPU from worker processes (one thread each); 0 workers runs in this process's threads
        best = max([v for w, v in rates.items() if int(w) > 0] or rates.values())
        cores[path] = {m: ips / best for m, ips in paper.items()}
    return {
        "images": len(samples), "image_size": image_size, "batch_size": batch_size,
        "decode_images_per_s": decode, "transform_images_per_s": augment,
        "device_augment_images_per_s": on_device, "device_augment_device": str(device),
        "device_decode_images_per_s": decode_on_device,
        "loader_images_per_s": loader, "loader_images_per_s_per_worker": per_worker,
        "paper_images_per_s_per_gpu": paper, "cores_per_gpu": cores,
    }


PATHS = {"worker": "worker path", "device": "device path", "device_decode": "decode-on-device path"}


def format_result(r: dict) -> str:
    t = r["transform_images_per_s"]
    paths = [p for p in PATHS if p in r["loader_images_per_s"]]
    lines = [f"{r['images']} JPEGs, crop {r['image_size']} px, batch {r['batch_size']}",
             f"one thread: decode only {r['decode_images_per_s']:.0f} images/s; train transform only "
             f"{t['worker']:.0f} (worker path), {t['device']:.0f} (device path: crop and flip, uint8)",
             f"on {r['device_augment_device']}, batched: the device path's jitter, lighting and normalisation "
             f"{r['device_augment_images_per_s']:.0f} images/s; the decode-on-device path's decode, crop and flip "
             f"{r['device_decode_images_per_s']:.0f} images/s",
             "", "| workers | " + " | ".join(f"{PATHS[p]} images/s | per worker" for p in paths) + " |",
             "|---|" + "---|---|" * len(paths)]
    for w in r["loader_images_per_s"]["worker"]:
        cells = [f"{r[k][p][w]:.0f}" for p in paths for k in ("loader_images_per_s", "loader_images_per_s_per_worker")]
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    lines += ["", "paper's rate per V100 (Table 3, efficient) and the loader cores it needs at this machine's rate "
              f"({' / '.join(PATHS[p] for p in paths)}):"]
    for m, ips in r["paper_images_per_s_per_gpu"].items():
        cores = " / ".join(f"{r['cores_per_gpu'][p][m]:.1f}" for p in paths)
        lines.append(f"  {m}: {ips:.0f} images/s -> {cores} cores per GPU")
    return "\n".join(lines)
