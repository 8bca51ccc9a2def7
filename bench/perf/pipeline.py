"""The whole training pipeline against the synthetic-tensor step: `train_epoch` fed by the
ImageFolder loader (JPEG decode, the paper's augmentation, DataLoader workers or the training
process's own threads) on each data path, against the same epoch on ready-made tensors, so the
ratio is what the data path costs.

The paths: "worker" (the workers do everything, float32 out) and "device" (the workers crop and
flip, uint8 out; `DeviceAugment` does the rest). Each loader variant runs at the intra-op threads
a real run takes (`runtime.threads: auto`: every core; `--grid` measures the others). Rounds are
interleaved like `bench`'s, each variant right after an epoch on synthetic tensors, its ratio the
median of the ratios to that neighbour.
"""
from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from bench.config import DataConfig
from bench.engine import distributed as dist
from bench.engine.data import train_set
from bench.engine.data.images import LoaderBatches, scan_split
from bench.engine.runtime import auto_threads, available_cores, resolve_workers
from bench.engine.training import Training, seed_everything
from bench.errors import ConfigError
from bench.perf.throughput import BenchSettings, SyntheticBatches, build_training, epoch_runner, time_rounds


def _on(base: Training, batches, threads: int) -> Callable[[int], torch.Tensor]:
    """`base`'s training fed by `batches`, one epoch a call at `threads`."""
    return epoch_runner(dataclasses.replace(base, data=dataclasses.replace(base.data, train=batches)), threads)


SYNTHETIC = "synthetic"
# the data paths timed: their `data:` settings
PATHS = {"worker": {"augment_on": "worker"}, "device": {"augment_on": "device"}}


def loader_batches(root: Path, s: BenchSettings, path: str, workers: int, device: torch.device) -> LoaderBatches:
    cfg = DataConfig(dataset="imagefolder", root=str(root), global_batch_size=s.batch_size, image_size=s.image_size,
                     **PATHS[path])
    _, samples = scan_split(Path(root, "train"))
    if len(samples) < s.batch_size * s.steps:
        raise ConfigError(f"bench-pipeline {root}: {len(samples)} training images, fewer than {s.steps} batches of {s.batch_size}")
    return LoaderBatches(**train_set(cfg, samples, s.image_size, device), batch_size=s.batch_size, shuffle=True,
                         max_batches=s.steps, workers=workers, pin_memory=True)


def measure_pipeline(root: Path, s: BenchSettings, workers: Sequence[int], paths: Sequence[str] = tuple(PATHS),
                     progress: Callable[[str], None] = lambda msg: None) -> dict:
    device = dist.local_device(s.device)
    seed_everything(0, s.deterministic)
    base, _ = build_training(s, s.run_config({}), device)
    cores = available_cores()
    synthetic = _on(base, SyntheticBatches(base.data.train.batches, s.steps), cores)
    runners, threads = {}, auto_threads(cores, 1)
    for w in workers:
        for path in paths:
            # each variant right after its own synthetic epoch: the machine's speed drifts
            # over seconds on a shared host, and a ratio of neighbours cancels the drift
            runners[f"{SYNTHETIC} before {path}/{w}w/{threads}t"] = synthetic
            runners[f"{path}/{w}w/{threads}t"] = _on(base, loader_batches(root, s, path, w, device), threads)
    progress(f"timing {len(runners) // 2} variants, each after a synthetic epoch: a warm-up epoch each, then "
             f"{s.rounds} rounds of {s.steps} batches")
    times = {name: t["times_s"] for name, t in time_rounds(runners, dataclasses.replace(s, warmup_steps=1), device).items()}
    per_image = s.steps * s.batch_size
    every_synthetic = [x for name, t in times.items() if name.startswith(SYNTHETIC) for x in t]
    variants = {SYNTHETIC: _rates([per_image / x for x in every_synthetic], [1.0])}
    for name, t in times.items():
        if not name.startswith(SYNTHETIC):
            before = times[f"{SYNTHETIC} before {name}"]
            variants[name] = {**_rates([per_image / x for x in t], [b / x for b, x in zip(before, t)]),
                              "times_s": t, "synthetic_times_s": before}
    default = resolve_workers("auto", device)
    return {"settings": dataclasses.asdict(s), "cores": cores, "workers": list(workers), "variants": variants,
            "default_workers": default, "pairing": "each variant against the synthetic epoch before it",
            "default_variants": [f"{path}/{default}w/{threads}t" for path in paths]}


def _rates(ips: list[float], ratios: list[float]) -> dict:
    """Images/s over the rounds, and the ratio of each round to its synthetic neighbour."""
    return {"images_per_s": statistics.median(ips), "images_per_s_min": min(ips), "images_per_s_max": max(ips),
            "ratio_to_synthetic": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios)}


def format_pipeline(r: dict) -> str:
    s = r["settings"]
    lines = [f"{s['model']}, {s['image_size']} px, batch {s['batch_size']}, {s['precision']}, {r['cores']} cores; "
             f"median of {s['rounds']} rounds of {s['steps']} batches; ratio: against the synthetic epoch before each",
             "", "| variant (path / workers / threads) | images/s (min-max) | ratio to synthetic (min-max) |", "|---|---|---|"]
    for name, v in r["variants"].items():
        mark = " (workers: auto)" if name in r["default_variants"] else ""
        lines.append(f"| {name}{mark} | {v['images_per_s']:.1f} ({v['images_per_s_min']:.1f}-{v['images_per_s_max']:.1f}) "
                     f"| {v['ratio_to_synthetic']:.3f} ({v['ratio_min']:.3f}-{v['ratio_max']:.3f}) |")
    return "\n".join(lines)
