"""Steps/s of a training process alone and with a second one beside it, at a given thread count.

Each measurement starts fresh worker processes (`python -m bench.perf.contention --worker`),
which build a small ResNet-18-D and train it with the harness's own `Step` on synthetic
batches, warm up, then count the steps they finish in a common time window. Counting finished
steps in a window, rather than timing a number of steps, keeps a collapsed run (seconds per
step) from stretching the benchmark.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from typing import Optional

import torch

from bench.config import RunConfig
from bench.engine.models import build_model
from bench.engine.step import Step, build_optimizer

WORKLOAD = {"model": {"name": "resnet18d", "small_input": True, "kwargs": {"channels": [16, 32, 64, 128], "stem_width": 16}},
            "data": {"global_batch_size": 128}, "efficient": {"precision": "bf16"}, "runtime": {"device": "cpu"}}
IMAGE_PX, NUM_CLASSES = 8, 10


def worker(threads: int, start_at: float, seconds: float, warmup: int) -> dict:
    """Train until `start_at`, then count the steps that finish in the next `seconds`."""
    torch.set_num_threads(threads)
    cfg = RunConfig.model_validate(WORKLOAD)
    model = build_model(cfg.model, NUM_CLASSES, 3, zero_gamma=True)
    optimizer = build_optimizer(model, cfg, torch.device("cpu"))
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    g = torch.Generator().manual_seed(0)
    images = torch.randn(cfg.data.global_batch_size, 3, IMAGE_PX, IMAGE_PX, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (cfg.data.global_batch_size,), generator=g)

    train_step = Step(model, optimizer, scaler, cfg, NUM_CLASSES, torch.device("cpu"))

    def step() -> None:
        float(train_step(images, labels, 0.01))
    for _ in range(warmup):
        step()
    while time.time() < start_at:   # the other worker may still be warming up
        step()
    steps, t0 = 0, time.time()
    while time.time() - t0 < seconds:
        step()
        steps += 1
    elapsed = time.time() - t0
    return {"threads": threads, "steps": steps, "seconds": elapsed, "steps_per_s": steps / elapsed}


def measure(processes: int, threads: int, seconds: float, warmup: int = 3, lead_s: float = 20.0) -> list[dict]:
    """Run `processes` workers side by side at `threads` each; their results."""
    start_at = time.time() + lead_s
    return side_by_side(["bench.perf.contention", "--worker", str(threads), str(start_at), str(seconds), str(warmup)],
                        processes, threads)


def side_by_side(module_args: list[str], processes: int, threads: int) -> list[dict]:
    """Start `processes` copies of `python -m MODULE ARGS` at `threads` intra-op threads each, at
    once; the JSON line each prints last."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    procs = [subprocess.Popen([sys.executable, "-m", *module_args], stdout=subprocess.PIPE, text=True, env=env)
             for _ in range(processes)]
    results = []
    for proc in procs:
        out, _ = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"{module_args[0]} exited with status {proc.returncode}")
        results.append(json.loads(out.strip().splitlines()[-1]))
    return results


def run_contention(cores: int, seconds: float = 10.0, progress=print) -> dict:
    """Alone and two side by side, with every core per process and with the budget (cores / 2)."""
    budget = max(cores // 2, 1)
    scenarios: dict[str, dict] = {}
    for name, processes, threads in (("alone", 1, cores), ("alone_budget", 1, budget),
                                     ("two_oversubscribed", 2, cores), ("two_budget", 2, budget)):
        progress(f"{name}: {processes} process(es) x {threads} thread(s), {seconds:.0f} s")
        runs = measure(processes, threads, seconds, warmup=1)
        scenarios[name] = {"processes": processes, "threads_each": threads, "runs": runs,
                           "steps_per_s_each": [r["steps_per_s"] for r in runs]}
    return {"workload": {**WORKLOAD, "image_px": IMAGE_PX}, "cores": cores, "window_s": seconds, "scenarios": scenarios}


def format_contention(r: dict) -> str:
    lines = [f"steps/s of a ResNet-18-D (1/4 width, {r['workload']['image_px']} px, batch 128, bf16) on {r['cores']} cores",
             "", "| scenario | processes | threads each | steps/s each |", "|---|---|---|---|"]
    for name, s in r["scenarios"].items():
        each = ", ".join(f"{v:.2f}" for v in s["steps_per_s_each"])
        lines.append(f"| {name} | {s['processes']} | {s['threads_each']} | {each} |")
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.perf.contention")
    p.add_argument("--worker", nargs=4, metavar=("THREADS", "START_AT", "SECONDS", "WARMUP"), required=True)
    threads, start_at, seconds, warmup = p.parse_args(argv).worker
    print(json.dumps(worker(int(threads), float(start_at), float(seconds), int(warmup))), flush=True)


if __name__ == "__main__":
    main()
