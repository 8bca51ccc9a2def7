"""One lock per run, so two ablations started on the same results directory never share a run.

`flock` locks belong to an open file and die with the process that holds them: a run whose
process was killed (even with SIGKILL) is free again at once, with no stale lock to clear.
"""
from __future__ import annotations

import fcntl
import os
import platform
from pathlib import Path

LOCK_DIR = ".locks"


class RunLock:
    """An exclusive, advisory lock on one run of a results directory."""

    def __init__(self, out: Path, run_path: Path):
        self.path = Path(out) / LOCK_DIR / (str(run_path).replace(os.sep, "__") + ".lock")
        self._fd: int | None = None

    def _open(self) -> int:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)

    def try_acquire(self) -> bool:
        """Take the lock if nobody holds it; False if another process does."""
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._hold(fd)
        return True

    def acquire(self) -> None:
        """Wait for the lock."""
        fd = self._open()
        fcntl.flock(fd, fcntl.LOCK_EX)
        self._hold(fd)

    def _hold(self, fd: int) -> None:
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {platform.node()}\n".encode())
        except OSError:   # a full disk: the lock holds all the same, its holder is not named
            pass

    def holder(self) -> str:
        """Who holds the lock, as its holder wrote it ("pid 123 on host")."""
        try:
            return self.path.read_text().strip() or "another process"
        except OSError:
            return "another process"

    def held_by(self) -> str:
        """Who holds the lock when a live process does ("pid 123 on host"), else ""; creates nothing."""
        if not self.path.is_file():
            return ""
        if self.try_acquire():
            self.release()
            return ""
        return self.holder()

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()
