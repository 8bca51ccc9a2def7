"""Images/s of the ImageFolder training pipeline (JPEG decode, the paper's augmentation, the
DataLoader), against the rate a GPU trains at in the paper.

Three numbers, each through the harness's own code: decoding alone (`read_image`), the train
transform alone on decoded images, and whole batches from `LoaderBatches` with 0..N worker
processes (timed after the first batch, so worker start-up is left out). A GPU in Table 3 of
the paper consumes 1,281,167 / (minutes per epoch × 60) / 8 images per second; dividing by the
per-worker rate gives the CPU cores one GPU needs.
"""
from __future__ import annotations

import itertools
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from bench.config import DataConfig
from bench.engine.data.device_aug import DeviceAugment
from bench.engine.data.images import FolderImages, LoaderBatches, read_image, scan_split, train_transform
from bench.errors import ConfigError
from bench.report.frames import load_paper

IMAGENET_TRAIN_IMAGES = 1_281_167


def paper_images_per_s_per_gpu(minutes: float, gpus: int = 8) -> float:
    return IMAGENET_TRAIN_IMAGES / (minutes * 60) / gpus


def paper_minutes_per_epoch() -> dict[str, float]:
    """Table 3's efficient rows (batch 1024, FP16, 8 V100s), from results/paper/table3.csv."""
    t3 = load_paper("table3")
    return dict(zip(*t3[t3["step"] == "efficient"][["model", "time_per_epoch_min"]].to_dict("list").values()))


def write_photo_tree(root: Path, images: int, classes: int = 10, size: tuple[int, int] = (500, 375),
                     quality: int = 90, seed: int = 0) -> Path:
    """root/train/<class>/*.JPEG of ILSVRC's typical size (500×375): smooth random colour
    fields plus mild noise, so that they compress and decode like photographs, not like noise."""
    rng = np.random.default_rng(seed)
    w, h = size
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


def _loader_rates(samples, transform, batch_size: int, workers: Sequence[int], seconds: float, progress, label: str) -> dict:
    rates = {}
    for w in workers:
        progress(f"DataLoader, {label} path, {w} worker(s)")
        # shuffled epochs drop the last partial batch: every batch holds batch_size images
        stream = _endless(LoaderBatches(FolderImages(samples, transform), batch_size, shuffle=True, workers=w))
        next(stream)   # worker start-up and the first batch are not timed
        rates[str(w)] = _rate(lambda s=stream: next(s), seconds, per_call=batch_size)
        stream.close()
    return rates


def measure_loader(root: Path, *, workers: Sequence[int], batch_size: int, image_size: int, seconds: float,
                   progress: Callable[[str], None] = lambda msg: None) -> dict:
    """Both data paths: "worker" (workers decode, crop, flip, jitter, light and normalise, sending
    float32) and "device" (workers decode, crop and flip, sending uint8; `DeviceAugment` does the
    rest batched, timed here on this process's device)."""
    cfgs = {path: DataConfig(dataset="imagefolder", root=str(root), global_batch_size=batch_size, image_size=image_size,
                             augment_on=path) for path in ("worker", "device")}
    _, samples = scan_split(Path(root, "train"))
    if len(samples) < batch_size:
        raise ConfigError(f"bench-loader {root}: {len(samples)} training images, fewer than one batch of {batch_size}")
    transforms = {path: train_transform(cfg, image_size) for path, cfg in cfgs.items()}
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
    progress("the device path's batched augmentation, on this process's device")
    batch = torch.stack([transforms["device"](next(decoded)) for _ in range(batch_size)])
    device_augment = DeviceAugment(cfgs["device"], torch.device("cpu"))
    on_device = _rate(lambda: device_augment(batch, seed=0), seconds, per_call=batch_size)

    loader = {path: _loader_rates(samples, t, batch_size, workers, seconds, progress, path) for path, t in transforms.items()}
    per_worker = {path: {w: ips / max(int(w), 1) for w, ips in rates.items()} for path, rates in loader.items()}
    paper = {m: paper_images_per_s_per_gpu(t) for m, t in paper_minutes_per_epoch().items()}
    cores = {}
    for path, rates in per_worker.items():
        # cores per GPU from worker processes (one thread each); 0 workers runs in this process's threads
        best = max([v for w, v in rates.items() if int(w) > 0] or rates.values())
        cores[path] = {m: ips / best for m, ips in paper.items()}
    return {
        "images": len(samples), "image_size": image_size, "batch_size": batch_size,
        "decode_images_per_s": decode, "transform_images_per_s": augment,
        "device_augment_images_per_s": on_device, "device_augment_device": "cpu",
        "loader_images_per_s": loader, "loader_images_per_s_per_worker": per_worker,
        "paper_images_per_s_per_gpu": paper, "cores_per_gpu": cores,
    }


def format_result(r: dict) -> str:
    t = r["transform_images_per_s"]
    lines = [f"{r['images']} JPEGs, crop {r['image_size']} px, batch {r['batch_size']}",
             f"one thread: decode only {r['decode_images_per_s']:.0f} images/s; train transform only "
             f"{t['worker']:.0f} (worker path), {t['device']:.0f} (device path: crop and flip, uint8)",
             f"device path's batched jitter, lighting and normalisation: {r['device_augment_images_per_s']:.0f} images/s "
             f"on {r['device_augment_device']}",
             "", "| workers | worker path images/s | per worker | device path images/s | per worker |", "|---|---|---|---|---|"]
    for w in r["loader_images_per_s"]["worker"]:
        cells = [f"{r[k][p][w]:.0f}" for p in ("worker", "device") for k in ("loader_images_per_s", "loader_images_per_s_per_worker")]
        lines.append(f"| {w} | " + " | ".join(cells) + " |")
    lines += ["", "paper's rate per V100 (Table 3, efficient) and the loader cores it needs at this machine's rate "
              "(worker path / device path):"]
    for m, ips in r["paper_images_per_s_per_gpu"].items():
        lines.append(f"  {m}: {ips:.0f} images/s -> {r['cores_per_gpu']['worker'][m]:.1f} / "
                     f"{r['cores_per_gpu']['device'][m]:.1f} cores per GPU")
    return "\n".join(lines)
