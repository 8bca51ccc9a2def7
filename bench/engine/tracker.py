"""Where a training run reports its progress besides its run directory (W&B, in `bench.ablation.tracking`)."""
from __future__ import annotations

from typing import Optional


class Tracker:
    """Receives one run's metrics; this base class drops them (W&B off, or not rank 0).

    As a context manager around training: an exception closes the tracked run as failed (a
    resumed run continues it); a run that trains to the end stays open for `finish(final)`.
    """

    def log_step(self, step: int, lr: float, loss) -> None:
        """One batch: its global step, lr and loss (a tensor, read on the host only when flushed)."""

    def log_epoch(self, row: dict) -> None:
        """One metrics.jsonl row."""

    def finish(self, final: Optional[dict] = None, failed: bool = False) -> None:
        """The final.json record into the summary, then the run is closed."""

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.finish(failed=True)
