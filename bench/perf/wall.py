"""`bench-ablation`: the wall time of a whole ablation as a user runs it, `run_ablation.py RECIPE`
in a fresh process writing to a fresh folder, with the top-1 each run printed.

`--cpu-kernels avx2` runs it on the AVX2 code of ATen, oneDNN and MKL on a CPU that has
AVX-512: the kernels an AVX2-only CPU runs, so the same numbers, and the speed of its
instructions (not of its clock, cache or memory: a real AVX2 machine may be slower still).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd

from bench.errors import BenchError
from bench.runs.files import read_json
from bench.runs.runfiles import RunFiles

RUN_ABLATION = Path(__file__).resolve().parents[2] / "run_ablation.py"
# the environment variables that cap each library's CPU code path (read when each starts)
CPU_KERNELS = {"native": {},
               "avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2"}}


def time_ablation(recipe: str, args: list[str], kernels: str = "native") -> dict:
    """One whole ablation: wall seconds, each run's top-1 and train time, the kernels it ran on."""
    env = {**os.environ, **CPU_KERNELS[kernels]}
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, str(RUN_ABLATION), recipe, "--out", tmp, "--no-progress", *args]
        start = time.perf_counter()
        done = subprocess.run(argv, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - start
        if done.returncode:
            last = (done.stderr.strip() or done.stdout.strip() or "no output").splitlines()[-1]
            raise BenchError(f"bench-ablation: {' '.join(argv[1:])} failed (exit {done.returncode}): {last}")
        runs = pd.read_csv(Path(tmp) / "runs.csv")
        env_json = read_json(Path(tmp, runs.path.iloc[0], RunFiles.ENV))
    return {"wall_s": wall, "cpu_kernels": env_json.get("cpu_kernels"), "threads": env_json.get("cpu_threads"),
            "runs": runs[["model", "role", "step", "seed", "top1", "top5", "train_time_s"]].to_dict("records")}


def format_wall(r: dict) -> str:
    lines = [f"{r['recipe']} {' '.join(r['args'])}: kernels {r['cpu_kernels']} "
             f"({r['kernels_asked']}), {r['threads']} threads", "", "| round | wall (s) | top-1 of each run |", "|---|---|---|"]
    for i, one in enumerate(r["rounds"]):
        tops = ", ".join(f"{x['step']} {x['top1']:.2f}" for x in one["runs"])
        lines.append(f"| {i} | {one['wall_s']:.1f} | {tops} |")
    return "\n".join(lines)
