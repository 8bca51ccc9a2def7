"""Files that are whole or absent: atomic writes (temporary file, fsync, rename) and safe reads."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import yaml

from bench.errors import BenchError, ConfigError


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
    atomic_write(path, lambda f: np.save(f, np.asarray(array)))


def save_torch(path: Path, obj: Any) -> None:
    atomic_write(path, lambda f: torch.save(obj, f))


def load_torch(path: Path) -> Any:
    """Load a checkpoint with the safe (weights-only) unpickler; a bad file is named."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for a truncated or foreign file
        raise BenchError(f"{path}: not a readable checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:120]})") from None


def read_json(path: Path) -> Optional[dict]:
    path = Path(path)
    if not path.is_file():
        return None
    return json.loads(path.read_text())


def read_yaml(path: Path) -> Any:
    path = Path(path)
    return yaml.safe_load(path.read_text()) if path.is_file() else None


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files of atomic writes that a killed process left behind.

    Only call this while holding the run's lock: a live writer's temporary file looks the same.
    """
    stale = sorted(Path(folder).glob(".*.tmp")) if Path(folder).is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
