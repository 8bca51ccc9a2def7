"""Run directories: atomic files, append-only metrics, checkpoints, environment record."""
from __future__ import annotations

import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

import torch
import yaml

from bench.errors import ConfigError

from bench.errors import BenchError

FINAL = "final.json"
CHECKPOINT = "last.pt"
WEIGHTS = "model.pt"
METRICS = "metrics.jsonl"
LOGIT_GAPS = "val_logit_gaps.npy"   # per validation image: max logit − mean of the others


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write through a temporary file in the same directory, fsync, then rename over `path`:
    a reader sees the old file or the whole new one, never a part."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):   # disk full, quota, read-only: the previous file is intact
            kept = "the previous version is kept" if path.exists() else "nothing was written"
            raise BenchError(f"{path}: write failed ({err.strerror or err}); {kept}") from None
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: f.write(json.dumps(obj, indent=2, sort_keys=True) + "\n"), "w")


def refuse_existing(path: Optional[str], flag: str = "--out") -> None:
    """Recorded results are never overwritten: a one-line error when `path` exists."""
    if path and Path(path).exists():
        raise ConfigError(f"{flag} {path}: exists; recorded results are never overwritten, choose a new file")


def write_text(path: Path, text: str) -> None:
    atomic_write(path, lambda f: f.write(text), "w")


def write_yaml(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: yaml.safe_dump(obj, f, sort_keys=False), "w")


def write_npy(path: Path, array: Any) -> None:
    import numpy as np

    atomic_write(path, lambda f: np.save(f, np.asarray(array)))


def save_torch(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def load_torch(path: Path) -> Any:
    """Load a checkpoint with the safe (weights-only) unpickler; a bad file is named."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a truncated or foreign file
        raise BenchError(f"{path}: not a readable checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:120]})") from None


def load_weights(model: torch.nn.Module, path: Path, what: str) -> None:
    """Load a state dict saved by this project into `model`; a file of another architecture or
    number of classes is a one-line error naming the first mismatch."""
    state = load_torch(path)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BenchError(f"{path}: not a state dict of model weights ({type(state).__name__})")
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    shapes = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if shapes:
        k = shapes[0]
        raise BenchError(f"{path}: weights do not fit the {what}: {k} has shape {tuple(state[k].shape)}, "
                         f"the model expects {tuple(expected[k].shape)}")
    if missing or unexpected:
        detail = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise BenchError(f"{path}: weights do not fit the {what} (another architecture: {len(missing)} keys missing, "
                         f"{len(unexpected)} unexpected, e.g. {detail})")
    model.load_state_dict(state)


def read_json(path: Path) -> Optional[dict]:
    path = Path(path)
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def read_yaml(path: Path) -> Any:
    path = Path(path)
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def read_metrics(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    text = path.read_text()
    lines = [line for line in text.splitlines() if line.strip()]
    if lines and not text.endswith("\n"):   # a row cut short by a killed process: not a row
        try:
            json.loads(lines[-1])
        except json.JSONDecodeError:
            lines.pop()
    return [json.loads(line) for line in lines]


def append_metrics(path: Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())


def truncate_metrics(path: Path, before_epoch: int) -> None:
    """Keep the rows of epochs before `before_epoch` (those a resumed run will not repeat)."""
    rows = [r for r in read_metrics(path) if r["epoch"] < before_epoch]
    write_text(path, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))


def env_info(device: torch.device, world_size: int = 1) -> dict:
    """Versions, commit, device and world size of a run, for its env.json."""
    import timm

    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                                cwd=Path(__file__).parent).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        commit = None
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "timm": timm.__version__,
        "git_commit": commit,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "world_size": world_size,
        "hostname": platform.node(),
    }
