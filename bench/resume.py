"""What a checkpoint needs beyond the weights for a resumed run to match an uninterrupted one."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch


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


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the temporary files of atomic writes that a killed process left behind.

    Only call this while holding the run's lock: a live writer's temporary file looks the same.
    """
    stale = sorted(Path(run_dir).glob(".*.tmp")) if Path(run_dir).is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
