"""The one environment record of a run or a benchmark: versions, commit, device, threads, host."""
from __future__ import annotations

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


def env_info(device: torch.device, world_size: int = 1, **resolved) -> dict:
    """Versions, commit, device, intra-op threads, world size, host and time (UTC), and the
    settings resolved at start-up (`resolved`: threads and where they come from, determinism)."""
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "git_commit": git_commit(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "world_size": world_size,
        "hostname": platform.node(),
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        **resolved,
    }
