"""A process's CPU thread budget and kernel determinism, resolved from the run's `runtime` settings.

`runtime.threads: auto` gives each process its share of the cores it may run on (its CPU
affinity; SLURM_CPUS_PER_TASK under SLURM), divided among the node's ranks under torchrun
(LOCAL_WORLD_SIZE), at least 1; loader workers take no thread from it (measured: a worker beside
a 2-thread step on 2 cores costs it little, a step cut to 1 thread a third); OMP_NUM_THREADS,
when set, is the user's choice. Low-precision autocast on a CPU without AVX-512/AMX is emulated: a run says so
at start (`precision_warning`). docs/performance.md has the measurements behind both.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Optional, Union

import torch

from bench.config.schema import RunConfig
from bench.errors import BenchError
from bench.runs.environment import FAST_LOW_PRECISION_FLAGS


def available_cores(env: Optional[Mapping[str, str]] = None) -> int:
    """The cores this process may run on: its affinity, capped by SLURM_CPUS_PER_TASK."""
    env = os.environ if env is None else env
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if "SLURM_CPUS_PER_TASK" in env:
        cores = min(cores, _positive(env, "SLURM_CPUS_PER_TASK"))
    return cores


def _positive(env: Mapping[str, str], key: str) -> int:
    try:
        value = int(env[key])
    except ValueError:
        value = 0
    if value < 1:
        raise BenchError(f"environment variable {key} = {env[key]!r}: expected a positive integer")
    return value


MAX_AUTO_WORKERS = 16   # each worker process holds its own copy of torch (about 0.3 GB)


def resolve_workers(setting: Union[str, int], device: torch.device, env: Optional[Mapping[str, str]] = None) -> int:
    """DataLoader worker processes for `data.workers`. auto: on a GPU, the cores of each local
    rank less the one the training process runs on (at most 16); on a CPU none, since the
    device is the same cores: the training process reads each batch on all its threads between
    steps (`LoaderBatches`), where workers beside it would take cores from its step."""
    if setting != "auto":
        return int(setting)
    if device.type == "cpu":
        return 0
    cores, local_ranks = _cores_and_local_ranks(os.environ if env is None else env)
    return max(1, min(MAX_AUTO_WORKERS, cores // local_ranks - 1))


def _cores_and_local_ranks(env: Mapping[str, str]) -> tuple[int, int]:
    """The cores this process may run on and the ranks that share them (1 for a SLURM task,
    whose SLURM_CPUS_PER_TASK is already its own)."""
    return available_cores(env), _positive(env, "LOCAL_WORLD_SIZE") if "LOCAL_WORLD_SIZE" in env else 1


def auto_threads(cores: int, local_ranks: int) -> int:
    """Intra-op threads of one process: its share of `cores`, at least 1."""
    return max(1, cores // max(local_ranks, 1))


def resolve_threads(setting: Union[str, int], env: Optional[Mapping[str, str]] = None) -> tuple[int, str]:
    """(threads, where the number comes from) for `runtime.threads`."""
    env = os.environ if env is None else env
    if setting != "auto":
        return int(setting), "runtime.threads"
    if "OMP_NUM_THREADS" in env:
        return _positive(env, "OMP_NUM_THREADS"), "OMP_NUM_THREADS"
    cores, local_ranks = _cores_and_local_ranks(env)
    return auto_threads(cores, local_ranks), f"auto: {cores} cores / {local_ranks} local rank(s)"


def resolve_deterministic(setting: Union[bool, str], device: torch.device) -> bool:
    """`runtime.deterministic`: True/False as set; auto is True on CPU, False on CUDA and MPS."""
    return device.type == "cpu" if setting == "auto" else bool(setting)


# what PyTorch's MPS backend runs: no float64, autocast in fp16 and bf16, no process group
MPS_PRECISIONS = ("fp32", "fp16", "bf16")


def check_mps(cfg: RunConfig, world_size: int) -> None:
    """One line for a setting a run on Apple's MPS cannot honour."""
    rt = cfg.runtime
    if cfg.efficient.precision not in MPS_PRECISIONS:
        raise BenchError(f"efficient.precision = {cfg.efficient.precision}: MPS has no float64; use one of {', '.join(MPS_PRECISIONS)}")
    if rt.deterministic is True:
        raise BenchError("runtime.deterministic = true: PyTorch's MPS kernels include some without a deterministic "
                         "variant, so a run there is not bit-exact; --set runtime.deterministic=auto (or false), or runtime.device=cpu")
    if world_size > 1:
        raise BenchError(f"runtime.device = {rt.device}: MPS trains in one process (no process group runs on it), "
                         f"not {world_size}")


def precision_warning(precision: str, device: torch.device, flags: set[str]) -> Optional[str]:
    """A one-line warning where `precision` autocast on this x86 CPU is emulated (none of
    FAST_LOW_PRECISION_FLAGS among `flags`); None elsewhere, and where the flags are unknown."""
    if device.type != "cpu" or precision not in FAST_LOW_PRECISION_FLAGS or "avx2" not in flags:
        return None
    if flags & FAST_LOW_PRECISION_FLAGS[precision]:
        return None
    return (f"warning: efficient.precision = {precision} on a CPU without AVX-512 or AMX: autocast emulates "
            f"{precision} here, several times slower than fp32 (--set efficient.precision=fp32 trains faster)")


_SHOWN: set[str] = set()


def say_once(line: str) -> None:
    """Print `line` the first time this process has it to say: once for a whole ablation."""
    if line not in _SHOWN:
        _SHOWN.add(line)
        print(line, flush=True)


def set_threads(threads: int, source: str, show: bool) -> None:
    """Set the intra-op thread count; say it once per process (and again if it changes)."""
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
    if show:
        say_once(f"threads: {threads} intra-op per process ({source})")
