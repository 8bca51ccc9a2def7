"""Checkpoints: everything a resumed run needs to match an uninterrupted one, weights to RNG states."""
from __future__ import annotations

import math
import random
import time
from typing import Optional

import numpy as np
import torch

from bench.engine import distributed as dist
from bench.engine.training import EpochStats, Training
from bench.runs import RunDir


def capture_rng() -> dict:
    """The states of every random generator a run may draw from: Python's, NumPy's global one,
    torch's CPU generator and, when present, every CUDA device's. Stored as plain types and
    tensors so that `torch.load(weights_only=True)` reads them back."""
    name, key, pos, has_gauss, cached = np.random.get_state()
    state = {"python": random.getstate(),
             "numpy": {"name": name, "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "cached": float(cached)},
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict) -> None:
    """Set the generators captured by `capture_rng`."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    n = state["numpy"]
    np.random.set_state((n["name"], n["key"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def rank_state(t: Training, stats: EpochStats) -> dict:
    """What only this rank knows mid-epoch: its sums, and with ghost batch norm over several ranks
    its own BatchNorm running statistics (they are averaged at the epoch's end only)."""
    state = stats.sums()
    if t.cfg.efficient.bn_batch_size and dist.current().distributed:
        state["buffers"] = {k: v.cpu() for k, v in t.model.named_buffers() if v.is_floating_point()}
    return state


def save_checkpoint(t: Training, run_dir: RunDir, epoch: int, partial: Optional[EpochStats] = None) -> None:
    """The state after `epoch` (−1: none yet): weights, optimizer, scaler, mixing and every other
    generator; with `partial`, the epoch in progress as well: its data position and every rank's
    sums. Called on every rank (the ranks' parts are gathered), written by rank 0."""
    ranks = dist.all_gather_object(rank_state(t, partial)) if partial is not None else None
    at = f"epoch {epoch}" if partial is None else \
        f"epoch {partial.epoch}, {partial.batch} of {t.steps_per_epoch} batches"
    if dist.is_main():
        run_dir.save_checkpoint({
            "model": t.model.state_dict(), "optimizer": t.optimizer.state_dict(), "scaler": t.scaler.state_dict(),
            "mix_rng": t.state.mix_rng.bit_generator.state, "rng": capture_rng(), "epoch": epoch,
            "train_time_s": t.state.train_time_s, "train_cpu_s": t.state.train_cpu_s, "saved_at": at,
            **({} if partial is None else {"partial": {"epoch": partial.epoch, "batch": partial.batch, "lr": partial.lr,
                                                       "time_s": partial.time_s, "ranks": ranks}})})
    t.state.saved_at, t.state.saved_time = at, time.monotonic()


def restore_partial(t: Training, partial: dict) -> EpochStats:
    """The epoch in progress of a mid-epoch checkpoint, with this rank's sums (and buffers). On
    another number of ranks rank 0 takes all the sums: the row then agrees to rounding."""
    ranks, ctx = partial["ranks"], dist.current()
    if len(ranks) == ctx.world_size:
        mine = ranks[ctx.rank]
    else:
        mine = {"loss_sum": sum(r["loss_sum"] for r in ranks) * (ctx.rank == 0),
                "images": sum(r["images"] for r in ranks) * (ctx.rank == 0),
                "terms_sum": {k: sum(r["terms_sum"][k] for r in ranks) * (ctx.rank == 0) for k in ranks[0]["terms_sum"]}}
    if "buffers" in mine:
        t.model.load_state_dict(mine["buffers"], strict=False)
    return EpochStats(mine["loss_sum"].to(t.device), mine["images"], partial["lr"], partial["time_s"],
                      {k: v.to(t.device) for k, v in mine["terms_sum"].items()}, partial["epoch"], partial["batch"],
                      mine.get("cpu_s", 0.0))


def restore_checkpoint(t: Training, run_dir: RunDir) -> EpochStats:
    """Restore the run's checkpoint into `t`, if any; returns where to go on from: the next epoch,
    or the epoch in progress at its data position."""
    state = run_dir.load_checkpoint()
    if state is None:
        return EpochStats(torch.zeros((), device=t.device))
    t.model.load_state_dict(state["model"])
    t.optimizer.load_state_dict(state["optimizer"])
    t.scaler.load_state_dict(state["scaler"])
    t.state.mix_rng.bit_generator.state = state["mix_rng"]
    restore_rng(state["rng"])   # Python, NumPy, torch and CUDA generators
    t.state.train_time_s, t.state.saved_at = state["train_time_s"], state["saved_at"]
    t.state.train_cpu_s = state.get("train_cpu_s", math.nan)   # a checkpoint from before it was kept: unknown
    if "partial" in state:
        return restore_partial(t, state["partial"])
    return EpochStats(torch.zeros((), device=t.device), epoch=state["epoch"] + 1)
