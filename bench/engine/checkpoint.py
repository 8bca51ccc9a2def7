"""Checkpoints: everything a resumed run needs to match an uninterrupted one, weights to RNG states."""
from __future__ import annotations

import random

import numpy as np
import torch

from bench.engine.training import Training
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


def save_checkpoint(t: Training, run_dir: RunDir, epoch: int) -> None:
    """The state after `epoch`: weights, optimizer, scaler, mixing and every other generator."""
    run_dir.save_checkpoint({
        "model": t.model.state_dict(), "optimizer": t.optimizer.state_dict(), "scaler": t.scaler.state_dict(),
        "mix_rng": t.mix_rng.bit_generator.state, "rng": capture_rng(), "epoch": epoch,
        "train_time_s": t.train_time_s})


def restore_checkpoint(t: Training, run_dir: RunDir) -> int:
    """Restore the run's checkpoint into `t`, if any; returns the epoch to start from."""
    state = run_dir.load_checkpoint()
    if state is None:
        return 0
    t.model.load_state_dict(state["model"])
    t.optimizer.load_state_dict(state["optimizer"])
    t.scaler.load_state_dict(state["scaler"])
    t.mix_rng.bit_generator.state = state["mix_rng"]
    restore_rng(state["rng"])   # Python, NumPy, torch and CUDA generators
    t.train_time_s = state["train_time_s"]
    return state["epoch"] + 1
