"""`gpu-check`: the GPU measurements of the harness in one command, sized for a short lease of
one GPU (docs/performance.md), each part writing results/bench/gpu-<device>-<part>.json (and a
figure), then a summary of the numbers that matter:

- ResNet-50-D at 224 px, batch 128, per trick against the plain PyTorch loop (`bench`), in
  fp16 with the gradient scaler, in bf16, without channels_last, and compiled: images/s, the
  distillation cost against the ResNet-152-D teacher's forward, peak memory, MFU against the
  device's measured matmul peak, the NaN check's cost;
- the ImageFolder loader at this machine's core count (`bench-loader`, every data path);
- a smoke run of the GPU-sized Fashion-MNIST recipe (on written IDX files: nothing is fetched).

`--tiny` runs every part at toy sizes (on a CPU, in CI: that it works, not how fast); the
compiled part needs a GPU and is left out on a CPU.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.engine.data.fake import write_fake_data
from bench.engine.runtime import available_cores
from bench.errors import BenchError
from bench.perf.commands import cmd_bench, cmd_bench_loader
from bench.runs import refuse_existing, write_json

ROOT = Path(__file__).resolve().parents[2]
FULL = ["--model", "resnet50d", "--teacher", "resnet152d", "--image-size", "224", "--batch-size", "128",
        "--steps", "10", "--rounds", "5", "--warmup-steps", "5"]
TINY = ["--model", "resnet18d", "--teacher", "resnet26d", "--width", "4", "--image-size", "16", "--batch-size", "4",
        "--num-classes", "5", "--steps", "1", "--rounds", "1", "--warmup-steps", "0"]


@dataclass(frozen=True)
class Part:
    name: str
    args: tuple[str, ...]        # the command's own arguments
    command: str = "bench"       # bench, bench-loader or smoke
    gpu_only: bool = False


def parts(tiny: bool, cores: int) -> list[Part]:
    size = TINY if tiny else FULL
    loader = (["--images", "8", "--batch-size", "4", "--image-size", "32", "--seconds", "0.2", "--workers", "0", "1"]
              if tiny else ["--images", "512", "--batch-size", "128", "--seconds", "4",
                            "--workers", str(max(1, cores // 2)), str(cores)])
    return [Part("fp16", (*size, "--precision", "fp16")),
            Part("bf16", (*size, "--precision", "bf16")),
            Part("fp16-contiguous", (*size, "--precision", "fp16", "--no-channels-last")),
            Part("fp16-compiled", (*size, "--precision", "fp16", "--compile"), gpu_only=True),
            Part("loader", tuple(loader), "bench-loader"),
            Part("smoke", (), "smoke")]


def run_smoke(out: Path) -> dict:
    """The GPU-sized Fashion-MNIST recipe, --smoke, in a fresh process on IDX files written here."""
    with tempfile.TemporaryDirectory() as tmp:
        data = write_fake_data(Path(tmp))["fashion_mnist"]
        env = {**os.environ, "FASHION_MNIST_ROOT": str(data)}
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, str(ROOT / "run_ablation.py"), str(ROOT / "recipes" / "fashion-mnist-table6.yaml"),
                               "--smoke", "--no-progress", "--out", str(Path(tmp) / "smoke")],
                              env=env, capture_output=True, text=True)
        result = {"returncode": proc.returncode, "time_s": time.perf_counter() - start,
                  "output_tail": (proc.stdout + proc.stderr)[-4000:]}
    write_json(out, result)
    if proc.returncode:
        raise BenchError(f"gpu-check: the Fashion-MNIST smoke run failed (exit {proc.returncode}); its output is in {out}")
    return result


def summarize(files: dict[str, Path]) -> dict:
    """The headline numbers of every part that ran."""
    out: dict = {}
    for name, path in files.items():
        r = json.loads(path.read_text())
        if "variants" in r:
            v = r["variants"]
            out[name] = {"plain_images_per_s": v["plain"]["images_per_s"], "pytorch_images_per_s": v["pytorch"]["images_per_s"],
                         "harness_ratio_to_pytorch": v["plain"]["ratio_to_pytorch"],
                         "distill_extra_ms_per_step": 1e3 * r["distill_extra_s_per_step"],
                         "teacher_forward_ms_per_step": 1e3 * r["teacher_forward_s_per_step"],
                         "peak_mem_mib": v["plain"]["peak_mem_mib"], "mfu": r["flop_utilization"],
                         "nan_check_cost_at_default": r["nan_check_cost_at_default"]}
        elif "loader_images_per_s" in r:
            out[name] = {"loader_images_per_s": r["loader_images_per_s"], "cores_per_gpu": r["cores_per_gpu"]}
        else:
            out[name] = {"time_s": r["time_s"], "returncode": r["returncode"]}
    return out


def run_gpu_check(out_dir: Path, device: str, tiny: bool, dry_run: bool,
                  progress: Callable[[str], None] = print) -> dict:
    on_gpu = device != "cpu" and torch.cuda.is_available()
    if device == "cuda" and not on_gpu:
        raise BenchError("gpu-check --device cuda: no CUDA device here (use --device cpu --tiny for a check of the parts)")
    slug = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-") if on_gpu else "cpu"   # nvidia-h200
    cores = available_cores()
    chosen = [p for p in parts(tiny, cores) if on_gpu or not p.gpu_only]
    files = {p.name: Path(out_dir, f"gpu-{slug}-{p.name}{'-tiny' if tiny else ''}.json") for p in chosen}
    summary_path = Path(out_dir, f"gpu-{slug}-summary{'-tiny' if tiny else ''}.json")
    for path in [*files.values(), summary_path]:
        refuse_existing(str(path))   # before anything runs: finished results are never overwritten
    for p in chosen:
        progress(f"{p.name}: run_ablation.py {p.command} {' '.join(p.args)} -> {files[p.name]}")
    if dry_run:
        return {"planned": {p.name: str(files[p.name]) for p in chosen}}
    start = time.perf_counter()
    for p in chosen:
        t0 = time.perf_counter()
        progress(f"== {p.name} ==")
        if p.command == "smoke":
            run_smoke(files[p.name])
        else:
            args = [*p.args, "--out", str(files[p.name])] + (["--device", "cuda" if on_gpu else "cpu"] if p.command == "bench" else [])
            (cmd_bench if p.command == "bench" else cmd_bench_loader)(args)
        progress(f"{p.name}: {time.perf_counter() - t0:.0f} s")
    summary = {"device": slug, "cores": cores, "tiny": tiny, "time_s": time.perf_counter() - start,
               "skipped": [p.name for p in parts(tiny, cores) if p not in chosen], "parts": summarize(files)}
    write_json(summary_path, summary)
    progress(f"wrote {summary_path} ({summary['time_s']:.0f} s in all)")
    return summary


def gpu_check_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="run_ablation.py gpu-check", description=(
        "Every GPU measurement of the harness (training per trick and precision, compile, distillation, memory, "
        "MFU, the loader at this machine's cores, a recipe smoke run), each part's JSON and figure under "
        "--out-dir, then a summary."))
    p.add_argument("--out-dir", default=str(ROOT / "results" / "bench"), help="default: %(default)s")
    p.add_argument("--device", choices=["auto", "cuda", "cpu"], default="auto")
    p.add_argument("--tiny", action="store_true", help="toy sizes: that every part works, not how fast (CI)")
    p.add_argument("--dry-run", action="store_true", help="print the parts and their files; run nothing")
    args = p.parse_args(argv)
    Path(args.out_dir).mkdir(parents=True, exist_ok=True)
    run_gpu_check(Path(args.out_dir), args.device, args.tiny, args.dry_run)
    return 0
