"""`bench-pipeline --grid`: the whole pipeline's images/s for every intra-op thread count and
loader worker count, alone and with a second, identical job beside it.

Each cell starts fresh processes (`python -m bench.perf.grid`), which build the harness's
training (`build_training`) fed by the ImageFolder loader, warm up, then count the images
whose epochs finish in a common window (as `bench-threads` counts steps: a collapsed cell
cannot stretch the benchmark). A job alone is the training process and its loader workers side
by side; `runtime.threads: auto` takes the fastest thread count of one job. Two identical jobs
show the thread count at which two jobs on one machine keep their rate (what each must be given,
OMP_NUM_THREADS or taskset, since no job sees the other).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Optional

import torch

from bench.engine.loop import train_epoch
from bench.perf.contention import side_by_side
from bench.perf.pipeline import loader_batches
from bench.perf.throughput import BenchSettings, build_training

COLLAPSED = 0.25   # two jobs side by side at under a quarter of the rate alone, each


def grid_worker(root: Path, s: BenchSettings, path: str, workers: int, threads: int, start_at: float, seconds: float) -> dict:
    """Train until `start_at`, then count the images of the epochs that finish in `seconds`."""
    torch.set_num_threads(threads)
    device = torch.device("cpu")
    base, _ = build_training(s, s.run_config({}), device)
    t = dataclasses.replace(base, data=dataclasses.replace(base.data, train=loader_batches(root, s, path, workers, device)))
    epoch = 0
    while epoch == 0 or time.time() < start_at:   # a warm-up epoch; the other job may still be starting
        train_epoch(t, epoch)
        epoch += 1
    images, t0 = 0, time.time()
    while time.time() - t0 < seconds:
        train_epoch(t, epoch)
        epoch, images = epoch + 1, images + s.steps * s.batch_size
    elapsed = time.time() - t0
    return {"images": images, "seconds": elapsed, "images_per_s": images / elapsed}


def measure_cell(root: Path, s: BenchSettings, path: str, workers: int, threads: int, jobs: int,
                 seconds: float, lead_s: float) -> list[float]:
    """Images/s of each of `jobs` identical jobs side by side."""
    start_at = time.time() + lead_s
    args = ["bench.perf.grid", str(root), json.dumps(dataclasses.asdict(s)), path, str(workers), str(threads), str(start_at), str(seconds)]
    return [r["images_per_s"] for r in side_by_side(args, jobs, threads)]


def measure_grid(root: Path, s: BenchSettings, workers: list[int], cores: int, path: str = "worker",
                 seconds: float = 15.0, lead_s: float = 25.0, progress=print) -> dict:
    cells = []
    for w in workers:
        for threads in range(1, cores + 1):
            progress(f"{w} worker(s), {threads} thread(s): alone, then two jobs side by side")
            alone = measure_cell(root, s, path, w, threads, 1, seconds, lead_s)[0]
            two = measure_cell(root, s, path, w, threads, 2, seconds, lead_s)
            cells.append({"workers": w, "threads": threads, "alone": alone, "two": two,
                          "collapsed": min(two) < COLLAPSED * alone})
    return {"settings": dataclasses.asdict(s), "path": path, "cores": cores, "window_s": seconds,
            "collapsed_below": COLLAPSED, "cells": cells, "best": best_threads(cells)}


def best_threads(cells: list[dict]) -> dict:
    """Per worker count: the thread count of the fastest job alone ("one_job"), and the most threads
    at which two jobs side by side each keep more than COLLAPSED of that rate ("two_jobs", None: none)."""
    best: dict[str, dict] = {}
    for w in sorted({c["workers"] for c in cells}):
        mine = [c for c in cells if c["workers"] == w]
        best[str(w)] = {"one_job": max(mine, key=lambda c: c["alone"])["threads"],
                        "two_jobs": max((c["threads"] for c in mine if not c["collapsed"]), default=None)}
    return best


def format_grid(r: dict) -> str:
    s = r["settings"]
    lines = [f"{s['model']}, {s['image_size']} px, batch {s['batch_size']}, {s['precision']}, {r['path']} path, "
             f"{r['cores']} cores, {r['window_s']:.0f} s windows", "",
             "| workers | threads | images/s alone | two jobs side by side, each | collapsed |", "|---|---|---|---|---|"]
    for c in r["cells"]:
        two = ", ".join(f"{x:.1f}" for x in c["two"])
        lines.append(f"| {c['workers']} | {c['threads']} | {c['alone']:.1f} | {two} | {'yes' if c['collapsed'] else 'no'} |")
    best = ", ".join(f"{w} worker(s): {b['one_job']} for one job, {b['two_jobs']} each for two" for w, b in r["best"].items())
    return "\n".join(lines + ["", f"threads: {best}"])


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.perf.grid")
    for name in ("root", "settings", "path", "workers", "threads", "start_at", "seconds"):
        p.add_argument(name)
    a = p.parse_args(argv)
    s = BenchSettings(**json.loads(a.settings))
    print(json.dumps(grid_worker(Path(a.root), s, a.path, int(a.workers), int(a.threads), float(a.start_at), float(a.seconds))),
          flush=True)


if __name__ == "__main__":
    main()
