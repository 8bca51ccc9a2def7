"""Learning-rate schedules as a pure function of the global step (paper Sections 3.1 and 5.1)."""
from __future__ import annotations

import math
from collections.abc import Sequence


def lr_at(
    step: int,
    *,
    peak_lr: float,
    total_steps: int,
    warmup_steps: int = 0,
    kind: str = "cosine",
    milestones: Sequence[int] = (),
    gamma: float = 0.1,
) -> float:
    """Learning rate at a global iteration `step` (0-based).

    Warmup (Goyal et al. 2017, arXiv:1706.02677): the lr rises linearly from 0 towards
    `peak_lr` over the first `warmup_steps` iterations, lr = peak·(step + 1)/warmup_steps,
    so the first update is not taken at lr 0 and step `warmup_steps − 1` reaches the peak.

    After warmup, with t = step − warmup_steps and T = total_steps − warmup_steps:
    - "cosine" (He et al. 2019, arXiv:1812.01187, Eq. 5): η_t = ½(1 + cos(tπ/T))·peak,
      which reaches 0 at t = T (the end of training);
    - "step": peak·gamma^k, k = number of `milestones` (global steps) already reached.

    Args:
        step: global iteration, 0 ≤ step ≤ total_steps.
        peak_lr: learning rate at the end of warmup.
        total_steps: iterations in the whole run, warmup included.
        warmup_steps: iterations of linear warmup.
        kind: "cosine" or "step".
        milestones: global steps at which "step" multiplies the lr by `gamma`.
        gamma: step-decay factor.
    """
    if kind not in ("cosine", "step"):
        raise ValueError(f"schedule kind must be 'cosine' or 'step', got {kind!r}")
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"warmup_steps={warmup_steps} must lie in [0, total_steps={total_steps}]")
    if step < warmup_steps:
        return peak_lr * (step + 1) / warmup_steps
    if kind == "step":
        return peak_lr * gamma ** sum(step >= m for m in milestones)
    t, T = step - warmup_steps, max(total_steps - warmup_steps, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(t, T) / T)) * peak_lr
