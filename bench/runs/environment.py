"""The one environment record of a run or a benchmark: versions (every installed package),
commit and uncommitted changes, device, threads, host."""
from __future__ import annotations

import functools
import importlib.metadata
import platform
import subprocess
import time
from pathlib import Path
from typing import Optional

import timm
import torch


def command_output(cmd: list[str], timeout: float = 10, cwd: Path | None = None) -> str | None:
    """A command's stripped stdout; None when it cannot run, times out or fails."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def git_commit() -> str | None:
    return command_output(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent) or None


def git_dirty() -> bool | None:
    """Whether the source tree differs from its commit (`git status --porcelain`: changed,
    staged or untracked files, results/ left out); None without git or outside a repository."""
    out = command_output(["git", "status", "--porcelain", "--", ".", ":(exclude)results"], cwd=Path(__file__).resolve().parents[2])
    return None if out is None else bool(out)


def installed_packages() -> dict[str, str]:
    """Every installed distribution's version, by name (importlib.metadata; the first of a name
    found on sys.path wins, as for imports): read once a process, since the modules a process
    has imported stay those it started with."""
    return dict(_installed_packages())


@functools.cache
def _installed_packages() -> tuple[tuple[str, str], ...]:
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and name not in found:
            found[name] = dist.version
    return tuple(sorted(found.items(), key=lambda item: item[0].lower()))


# x86 flags under which oneDNN runs bf16/fp16 natively or emulates them at about fp32's speed
FAST_LOW_PRECISION_FLAGS = {"bf16": {"avx512_bf16", "amx_bf16", "avx512bw", "avx_ne_convert"},
                            "fp16": {"avx512_fp16", "amx_fp16", "avx512bw", "avx_ne_convert"}}


def cpu_info(path: str = "/proc/cpuinfo") -> tuple[str, set[str]]:
    """(model name, instruction-set flags) of the first CPU in `path`; ("", set()) where unreadable."""
    try:
        text = open(path, encoding="utf-8", errors="replace").read()
    except OSError:
        return "", set()
    model, flags = "", set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and not model:
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = set(value.split())
    return model, flags


def machine_name(env: dict) -> Optional[str]:
    """What a run trained on, from its env.json: "cuda:0: NVIDIA H100 ...", or the CPU's model and
    the kernels ATen ran ("cpu: AMD EPYC (AVX512)": AVX2 and AVX-512 kernels train to other numbers
    and at other speeds); None where env.json does not say."""
    if not isinstance(env, dict) or "device" not in env:
        return None
    if env["device"] != "cpu":
        return f"{env['device']}: {env.get('device_name')}"
    if not env.get("cpu_model"):
        return None
    flags = env.get("cpu_flags") or []
    isa = env.get("cpu_kernels") or ("AVX512" if any(str(f).startswith("avx512") for f in flags) else "AVX2")
    return f"cpu: {env['cpu_model']} ({isa})"


def env_info(device: torch.device, world_size: int = 1, **resolved) -> dict:
    """Versions, commit (and whether the tree had uncommitted changes), device, intra-op threads,
    world size, host and time (UTC), the settings resolved at start-up (`resolved`: threads and
    where they come from, determinism) and every installed package's version."""
    model, flags = cpu_info()
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "git_commit": git_commit(),
        "git_dirty": git_dirty(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "world_size": world_size,
        "hostname": platform.node(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "cpu_model": model,   # and the low-precision flags it has
        "cpu_flags": sorted(flags & (set().union(*FAST_LOW_PRECISION_FLAGS.values()) | {"avx2"})),
        "cpu_kernels": torch.backends.cpu.get_cpu_capability(),   # ATen's code path: AVX2 and AVX512 train to other numbers
        **resolved,
        "packages": installed_packages(),
    }
