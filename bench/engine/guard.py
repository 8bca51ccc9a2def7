"""Stop a run whose loss stops being a number, naming the step, without a host sync per step."""
from __future__ import annotations

from pathlib import Path

import torch

from bench.errors import BenchError


class NonFiniteLoss(BenchError):
    """The training loss became NaN or ±inf; the run stops and keeps its last good checkpoint."""

    def __init__(self, message: str, step: int, epoch: int, value: float):
        super().__init__(message)
        self.step, self.epoch, self.value = step, epoch, value


class LossGuard:
    """Remembers the first global step whose loss is not finite.

    `update` runs on the device (no `.item()`); the loop reads `first_step` at its checks (every
    `runtime.nan_check_steps` batches and at each epoch's end, one device sync each, agreed over
    the ranks) and calls `check`, before anything after the bad step can be evaluated or saved.
    """

    def __init__(self, device: torch.device):
        self.first_step = torch.full((), -1, dtype=torch.long, device=device)
        self.value = torch.zeros((), device=device)

    def update(self, loss: torch.Tensor, step: int) -> None:
        loss = loss.detach().float()
        new = ~torch.isfinite(loss) & (self.first_step < 0)
        self.first_step = torch.where(new, torch.full_like(self.first_step, step), self.first_step)
        self.value = torch.where(new, loss, self.value)

    def check(self, step: int, steps_per_epoch: int, checkpoint: Path, saved: str) -> None:
        """Raise `NonFiniteLoss` when `step`, the first step with a NaN or infinite loss on any
        rank (−1: none yet), is one; `saved` says which checkpoint `checkpoint` holds ("" none)."""
        if step < 0:
            return
        epoch, batch = divmod(step, steps_per_epoch)
        value = float(self.value) if int(self.first_step) == step else float("nan")   # another rank's step
        kept = f"last good checkpoint kept: {checkpoint} ({saved})" if saved and Path(checkpoint).is_file() \
            else "no checkpoint yet"
        raise NonFiniteLoss(f"loss became {value} at step {step} (epoch {epoch}, batch {batch + 1} of "
                            f"{steps_per_epoch}); run stopped, {kept}", step, epoch, value)
