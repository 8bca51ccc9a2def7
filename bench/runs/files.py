"""Files that are whole or absent: atomic writes (temporary file, fsync, rename) and safe reads."""
from __future__ import annotations

import argparse
import errno
import hashlib
import json
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import numpy as np
import safetensors.torch
import torch
import yaml

from bench.errors import BenchError, ConfigError, first_line

FULL_DISK_BYTES = 1 << 20   # less free space than this after a failed write: the disk is full


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: Path, write: Callable[[Any], None], mode: str = "wb") -> None:
    """Write through a temporary file in the same directory, fsync, then rename over `path`:
    a reader sees the old file or the whole new one, never a part. The file gets the mode any
    write would give it: an existing file's own, else what the umask leaves of rw-rw-rw-
    (mkstemp's temporary file is rw------- whatever the umask, which would hide results from a team)."""
    path = Path(path)
    try:
        file_mode = path.stat().st_mode & 0o7777
    except OSError:
        file_mode = 0o666 & ~_umask()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:   # a folder the user cannot write: read-only, another's, a file in the way
        kept = "the previous version is kept" if path.exists() else "nothing was written"
        raise BenchError(f"{path}: cannot write here ({err.strerror or type(err).__name__}); {kept}") from None
    try:
        os.fchmod(fd, file_mode)
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        reason = write_failure(err, path.parent)   # before the temporary file frees its space
        Path(tmp).unlink(missing_ok=True)
        if not isinstance(err, Exception):   # KeyboardInterrupt, SystemExit: not a failed write
            raise
        # disk full, quota, read-only, or a writer that fails on its own (torch's zip writer raises
        # RuntimeError("unexpected pos ...") on a full disk): the previous file is intact either way
        kept = "the previous version is kept" if path.exists() else "nothing was written"
        raise BenchError(f"{path}: write failed ({reason}); {kept}") from None
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def write_failure(err: BaseException, folder: Path) -> str:
    """Why a write failed, in words: the OS error behind it (a writer that wraps one, as torch's
    does, keeps it as the exception's context), else a nearly full disk, else the exception."""
    cause: Optional[BaseException] = err
    while cause is not None:
        if isinstance(cause, OSError):
            return cause.strerror or str(cause)
        cause = cause.__cause__ or cause.__context__
    try:
        stat = os.statvfs(folder)
        if stat.f_bavail * stat.f_frsize < FULL_DISK_BYTES:
            return os.strerror(errno.ENOSPC)
    except OSError:
        pass
    return f"{type(err).__name__}: {first_line(err)}" if isinstance(err, Exception) else type(err).__name__


def find(root: Path, name: str) -> list[Path]:
    """Every file called `name` below `root`, in path order, through folders that are symbolic
    links too (a run linked in from a teammate's folder is a run of this one), each real folder
    once. `Path.glob("**")` does not descend into linked folders."""
    found, seen = [], set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        dirs.sort()
        if name in files:
            found.append(Path(folder) / name)
    return sorted(found)


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
    """Load a checkpoint with the safe (weights-only) unpickler, or a safetensors file (by its
    suffix or its header); a bad file is named.

    Besides tensors and plain containers, the unpickler admits only `argparse.Namespace`: the
    `args` that timm's train.py stores in its checkpoints. Any other pickled object is refused
    unread, so loading a file never runs its code.
    """
    path = Path(path)
    if path.suffix == ".safetensors" or is_safetensors(path):
        try:
            return safetensors.torch.load_file(path, device="cpu")
        except Exception as err:  # a header that lies, a truncated file
            raise BenchError(f"{path}: not a readable safetensors file ({type(err).__name__}: {first_line(err)})") from None
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        unsafe = _pickled_globals(path)
        if not unsafe:
            raise BenchError(f"{path}: not a readable checkpoint (UnpicklingError: {first_line(err)})") from None
        raise BenchError(f"{path}: not a readable checkpoint (it pickles objects other than weights: "
                         f"{', '.join(unsafe)}; refused unread)") from None
    except Exception as err:  # torch raises several types for a truncated or foreign file
        raise BenchError(f"{path}: not a readable checkpoint ({type(err).__name__}: {first_line(err)})") from None


def is_safetensors(path: Path) -> bool:
    """Whether a file starts as safetensors does: an 8-byte little-endian header length, then a
    JSON object of that length that fits in the file."""
    try:
        with open(path, "rb") as f:
            head = f.read(9)
        size = Path(path).stat().st_size
    except OSError:   # not a file: torch.load names the problem
        return False
    return len(head) == 9 and head[8:9] == b"{" and 8 + int.from_bytes(head[:8], "little") <= size


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _pickled_globals(path: Path) -> list[str]:
    """The classes and functions a torch file's pickle names beyond what weights need (read, not run)."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # a legacy (non-zip) file: torch names none
        return []


class Unreadable(BenchError):
    """A file that is there but cannot be read as what it should be (truncated, garbage, empty):
    `path` and `reason`, for callers that say what to do about it."""

    def __init__(self, path: Path, reason: str):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{path}: unreadable ({reason})")


def read_text(path: Path) -> Optional[str]:
    """A text file's content, None when there is no file; `Unreadable` when it is empty or not UTF-8."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        text = path.read_bytes().decode()
    except UnicodeDecodeError as err:
        raise Unreadable(path, f"not UTF-8 text: byte {err.start}") from None
    if not text.strip():
        raise Unreadable(path, "empty file")
    return text


def read_json(path: Path) -> Optional[Any]:
    """A JSON file's value, None when there is no file; `Unreadable` names a damaged one."""
    text = read_text(path)
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise Unreadable(path, f"not valid JSON: {err.msg} at line {err.lineno} column {err.colno}") from None


def read_yaml(path: Path) -> Any:
    """A YAML file's value, None when there is no file; `Unreadable` names a damaged one."""
    text = read_text(path)
    if text is None:
        return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise Unreadable(path, f"not valid YAML: {getattr(err, 'problem', None) or first_line(err)}{where}") from None


def remove_stale_temporaries(folder: Path) -> list[Path]:
    """Delete the temporary files of atomic writes that a killed process left behind.

    Only call this while holding the run's lock: a live writer's temporary file looks the same.
    """
    stale = sorted(Path(folder).glob(".*.tmp")) if Path(folder).is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale
