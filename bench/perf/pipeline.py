"""The whole training pipeline against the synthetic-tensor step: `train_epoch` fed by the
ImageFolder loader (JPEG decode, the paper's augmentation, DataLoader workers) on either data
path, against the same epoch on ready-made tensors, so the ratio is what the data path costs.

Each loader variant runs at the intra-op threads a real run would take (`runtime.threads: auto`:
the cores less one per worker) and, where that differs, at every core; variants are timed in
interleaved rounds like `bench`, each round an epoch of `steps` batches.
"""
from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from bench.config import DataConfig
from bench.engine import distributed as dist
from bench.engine.data.device_aug import DeviceAugment
from bench.engine.data.images import FolderImages, LoaderBatches, scan_split, train_transform
from bench.engine.runtime import auto_threads, available_cores
from bench.engine.training import Training, seed_everything
from bench.errors import ConfigError
from bench.perf.throughput import BenchSettings, SyntheticBatches, build_training, epoch_runner, time_rounds


def _on(base: Training, batches, threads: int) -> Callable[[int], torch.Tensor]:
    """`base`'s training fed by `batches`, one epoch a call at `threads`."""
    return epoch_runner(dataclasses.replace(base, data=dataclasses.replace(base.data, train=batches)), threads)


def _loader(root: Path, s: BenchSettings, path: str, workers: int, device: torch.device) -> LoaderBatches:
    cfg = DataConfig(dataset="imagefolder", root=str(root), global_batch_size=s.batch_size, image_size=s.image_size,
                     augment_on=path)
    _, samples = scan_split(Path(root, "train"))
    if len(samples) < s.batch_size * s.steps:
        raise ConfigError(f"bench-pipeline {root}: {len(samples)} training images, fewer than {s.steps} batches of {s.batch_size}")
    augment = DeviceAugment(cfg, device) if path == "device" else None
    return LoaderBatches(FolderImages(samples, train_transform(cfg, s.image_size)), s.batch_size, shuffle=True,
                         max_batches=s.steps, workers=workers, pin_memory=True, augment=augment)


def measure_pipeline(root: Path, s: BenchSettings, workers: Sequence[int], paths: Sequence[str] = ("worker", "device"),
                     progress: Callable[[str], None] = lambda msg: None) -> dict:
    device = dist.local_device(s.device)
    seed_everything(0, s.deterministic)
    base, _ = build_training(s, s.run_config({}), device)
    cores = available_cores()
    runners = {"synthetic": _on(base, SyntheticBatches(base.data.train.batches, s.steps), cores)}
    for w in workers:
        budget = auto_threads(cores, 1, w)
        for path in paths:
            batches = _loader(root, s, path, w, device)
            for threads in dict.fromkeys((budget, cores)):
                runners[f"{path}/{w}w/{threads}t"] = _on(base, batches, threads)
    progress(f"timing {len(runners)} variants: a warm-up epoch each, then {s.rounds} rounds of {s.steps} batches")
    times = {name: t["times_s"] for name, t in time_rounds(runners, dataclasses.replace(s, warmup_steps=1), device).items()}
    synthetic = times["synthetic"]
    variants = {}
    for name, t in times.items():
        ips = [s.steps * s.batch_size / x for x in t]
        variants[name] = {"images_per_s": statistics.median(ips), "images_per_s_min": min(ips),
                          "images_per_s_max": max(ips),
                          "ratio_to_synthetic": statistics.median(ts / x for ts, x in zip(synthetic, t))}
    return {"settings": dataclasses.asdict(s), "cores": cores, "workers": list(workers), "variants": variants}


def format_pipeline(r: dict) -> str:
    s = r["settings"]
    lines = [f"{s['model']}, {s['image_size']} px, batch {s['batch_size']}, {s['precision']}, {r['cores']} cores; "
             f"median of {s['rounds']} rounds of {s['steps']} batches",
             "", "| variant (path / workers / threads) | images/s (min-max) | ratio to synthetic |", "|---|---|---|"]
    for name, v in r["variants"].items():
        lines.append(f"| {name} | {v['images_per_s']:.1f} ({v['images_per_s_min']:.1f}-{v['images_per_s_max']:.1f}) "
                     f"| {v['ratio_to_synthetic']:.3f} |")
    return "\n".join(lines)
