"""The one environment record of a run or a benchmark: versions (every installed package),
commit and uncommitted changes, device, threads, host."""
from __future__ import annotations

import importlib.metadata
import platform
import subprocess
import time
from pathlib import Path

import timm
import torch


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def git_dirty() -> bool | None:
    """Whether the source tree differs from its commit (`git status --porcelain`: changed,
    staged or untracked files, results/ left out); None without git or outside a repository."""
    try:
        done = subprocess.run(["git", "status", "--porcelain", "--", ".", ":(exclude)results"], capture_output=True,
                              text=True, timeout=10, cwd=Path(__file__).resolve().parent.parent.parent)
    except (OSError, subprocess.SubprocessError):
        return None
    return bool(done.stdout.strip()) if done.returncode == 0 else None


def installed_packages() -> dict[str, str]:
    """Every installed distribution's version, by name (importlib.metadata; the first of a name
    found on sys.path wins, as for imports)."""
    found: dict[str, str] = {}
    for dist in importlib.metadata.distributions():
        name = dist.metadata["Name"]
        if name and name not in found:
            found[name] = dist.version
    return dict(sorted(found.items(), key=lambda item: item[0].lower()))


def env_info(device: torch.device, world_size: int = 1, **resolved) -> dict:
    """Versions, commit (and whether the tree had uncommitted changes), device, intra-op threads,
    world size, host and time (UTC), the settings resolved at start-up (`resolved`: threads and
    where they come from, determinism) and every installed package's version."""
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
        **resolved,
        "packages": installed_packages(),
    }
