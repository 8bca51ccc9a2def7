"""Stopping a run on request (SLURM's time-limit or preemption signal, SIGTERM before a requeue):
the signal handler only records the signal; the loop checkpoints at its next check and raises
`Preempted`, so nothing runs inside the handler and every rank stops at the same step."""
from __future__ import annotations

import signal
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Optional


class Preempted(Exception):
    """The run stopped on request after writing its checkpoint; running it again resumes it.
    Not a `BenchError`: nothing is wrong with the input, and the run directory is kept."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


class StopRequest:
    """The first signal received while installed; `requested` is what the loop looks at."""

    def __init__(self) -> None:
        self.signum: Optional[int] = None

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame) -> None:
        if self.signum is None:   # a handler does nothing else: no I/O, no collective, no exception
            self.signum = signum

    @contextmanager
    def installed(self, signals: Iterable[signal.Signals]) -> Iterator[StopRequest]:
        """Record `signals` while inside; the handlers before are put back on the way out."""
        previous = {s: signal.signal(s, self._handle) for s in signals}
        try:
            yield self
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)


def signal_name(signum: Optional[int]) -> str:
    return signal.Signals(signum).name if signum else "no signal"
