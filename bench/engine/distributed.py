"""Distributed training context: rank, world size and device from torchrun's or SLURM's
environment; process-group set-up, rank-0 gating and metric reduction.

One process per device. torchrun sets RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR /
MASTER_PORT; under SLURM (one task per GPU, `srun` or submitit) they come from SLURM_PROCID,
SLURM_NTASKS, SLURM_LOCALID and the job's first node. Without either, training is one process
and nothing here talks to torch.distributed.
"""
from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
import torch.distributed as torch_dist

from bench.errors import BenchError


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    source: str = "single"        # "torchrun", "slurm" or "single"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def _expand_ranges(body: str, nodelist: str) -> list[str]:
    """"03-05,9" → ["03", "04", "05", "9"]: each range keeps the zero padding of its start."""
    out = []
    for part in body.split(","):
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", part.strip())
        if not match or (match[2] is not None and int(match[2]) < int(match[1])):
            raise BenchError(f"SLURM_JOB_NODELIST = {nodelist!r}: cannot read the range [{body}]")
        lo, hi = match[1], match[2] if match[2] is not None else match[1]
        out += [str(i).zfill(len(lo)) for i in range(int(lo), int(hi) + 1)]
    return out


def expand_hostlist(nodelist: str) -> list[str]:
    """The host names of a SLURM node list, in SLURM's order (as `scontrol show hostnames`):
    "gpu[03-05,9],cpu1" → gpu03 gpu04 gpu05 gpu9 cpu1; "node[01-02]-ib" → node01-ib node02-ib;
    "rack[1-2]-n[1-2]" → rack1-n1 rack1-n2 rack2-n1 rack2-n2."""
    groups, depth, start = [], 0, 0
    for i, ch in enumerate(nodelist + ","):
        depth += {"[": 1, "]": -1}.get(ch, 0)
        if depth not in (0, 1):
            raise BenchError(f"SLURM_JOB_NODELIST = {nodelist!r}: unbalanced brackets")
        if ch == "," and depth == 0:
            groups.append(nodelist[start:i].strip())
            start = i + 1
    if depth or not all(groups):
        raise BenchError(f"SLURM_JOB_NODELIST = {nodelist!r}: cannot read a host name")
    hosts: list[str] = []
    for group in groups:
        names = [""]
        for text, body in re.findall(r"([^\[\]]*)(?:\[([^\]]*)\])?", group):
            values = _expand_ranges(body, nodelist) if body else [""]
            names = [name + text + value for name in names for value in values]
        hosts += names
    return hosts


def first_host(nodelist: str) -> str:
    """The first host of a SLURM node list: "gpu[03-05,9],cpu1" → "gpu03"; the rendezvous host."""
    return expand_hostlist(nodelist)[0]


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        return int(env[key])
    except ValueError:
        raise BenchError(f"environment variable {key} = {env[key]!r}: not an integer") from None


def read_env(env: Optional[Mapping[str, str]] = None) -> DistEnv:
    """Where this process stands, from torchrun's variables first, then SLURM's."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return DistEnv(_int(env, "RANK"), _int(env, "WORLD_SIZE"), _int(env, "LOCAL_RANK") if "LOCAL_RANK" in env else 0,
                       env.get("MASTER_ADDR", "127.0.0.1"), _int(env, "MASTER_PORT") if "MASTER_PORT" in env else 29500,
                       "torchrun")
    if "SLURM_PROCID" in env and "SLURM_NTASKS" in env and _int(env, "SLURM_NTASKS") > 1:
        job_id = _int(env, "SLURM_JOB_ID") if "SLURM_JOB_ID" in env else 0
        port = _int(env, "MASTER_PORT") if "MASTER_PORT" in env else 20000 + job_id % 30000
        return DistEnv(_int(env, "SLURM_PROCID"), _int(env, "SLURM_NTASKS"), _int(env, "SLURM_LOCALID"),
                       first_host(env.get("SLURM_JOB_NODELIST", "127.0.0.1")), port, "slurm")
    return DistEnv()


_CURRENT = DistEnv()


def current() -> DistEnv:
    """The context set by `init()`; a single process until then."""
    return _CURRENT


def init(device: str = "auto", sync_env: Optional[Mapping[str, str]] = None) -> DistEnv:
    """Join the process group described by the environment (idempotent).

    nccl when the runs use CUDA, gloo on CPU. Each process uses GPU `local_rank`.
    """
    global _CURRENT
    found = read_env(sync_env)
    if not found.distributed or torch_dist.is_initialized():
        _CURRENT = found
        return found
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(found.local_rank)
    os.environ.setdefault("MASTER_ADDR", found.master_addr)
    os.environ.setdefault("MASTER_PORT", str(found.master_port))
    # on CUDA the group is bound to this rank's device, so NCCL's barriers and collectives use it
    bound = {"device_id": torch.device("cuda", found.local_rank)} if use_cuda else {}
    torch_dist.init_process_group("nccl" if use_cuda else "gloo", init_method="env://",
                                  rank=found.rank, world_size=found.world_size, **bound)
    _CURRENT = found
    return found


def is_main() -> bool:
    """True on the one process (rank 0) that writes files and logs."""
    return _CURRENT.rank == 0


def barrier() -> None:
    if _CURRENT.distributed:
        torch_dist.barrier()


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Element-wise sum over ranks of a few scalars (counts, loss sums)."""
    if not _CURRENT.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch_dist.all_reduce(t)
    return t.tolist()


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over ranks of a small tensor on this rank's device (itself when alone)."""
    if _CURRENT.distributed:
        torch_dist.all_reduce(values, op=torch_dist.ReduceOp.MAX)
    return values


def all_gather_object(obj) -> list:
    """Every rank's `obj` (small, picklable), in rank order."""
    if not _CURRENT.distributed:
        return [obj]
    out: list = [None] * _CURRENT.world_size
    torch_dist.all_gather_object(out, obj)
    return out


def gather_batches(parts: list) -> list:
    """This rank's share of each evaluation batch (a 1-D array per batch, `images[rank::world]`)
    gathered from every rank back into the batches' order: one array per batch, on every rank."""
    ranks = all_gather_object(parts)
    out = []
    for shares in zip(*ranks):
        batch = np.empty(sum(len(s) for s in shares), dtype=shares[0].dtype)
        for r, share in enumerate(shares):
            batch[r::len(shares)] = share
        out.append(batch)
    return out


def mps_available() -> bool:
    """Apple silicon's GPU (Metal Performance Shaders), where this torch build has it."""
    return torch.backends.mps.is_available()


def local_device(name: str) -> torch.device:
    """The device of this process: `cuda:local_rank` when CUDA is asked for; auto takes CUDA,
    then Apple's MPS, then the CPU."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not mps_available():
            raise BenchError("runtime.device = mps: no MPS device here (torch.backends.mps.is_available() is false: "
                             "Apple silicon and macOS 12.3 or newer); use auto or cpu")
        return torch.device("mps")
    if not torch.cuda.is_available():
        raise BenchError(f"runtime.device = {name}: no CUDA device here (torch.cuda.is_available() is false); "
                         "use auto or cpu")
    return torch.device("cuda", _CURRENT.local_rank)


def average_buffers(model: torch.nn.Module) -> None:
    """Replace every floating-point buffer (BatchNorm running statistics) by its mean over ranks."""
    if not _CURRENT.distributed:
        return
    for buffer in model.buffers():
        if buffer.is_floating_point():
            torch_dist.all_reduce(buffer)
            buffer.div_(_CURRENT.world_size)


def wrap_model(model: torch.nn.Module, device: torch.device, sync_bn: bool,
               broadcast_buffers: bool = True) -> torch.nn.Module:
    """DistributedDataParallel over the ranks (gradients averaged), optionally SyncBatchNorm;
    the model itself when there is one process. `broadcast_buffers=False` keeps each rank's
    running statistics (ghost batch norm averages them with `average_buffers`)."""
    if not _CURRENT.distributed:
        return model
    if sync_bn and device.type != "cuda":
        raise BenchError(f"runtime.sync_bn = true: SyncBatchNorm needs CUDA devices (this run is on {device.type})")
    if sync_bn:
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=broadcast_buffers)
