"""Label smoothing (Szegedy et al. 2016, arXiv:1512.00567; He et al. 2019, Eq. 3)."""
from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field

from bench.strict import Strict


class LabelSmoothingConfig(Strict):
    eps: float = Field(0.1, ge=0.0, lt=1.0)
    form: Literal["paper", "uniform"] = "paper"  # ε/(K−1) off-target (paper) or ε/K (GluonCV, timm)


def smooth_targets(labels: torch.Tensor, num_classes: int, eps: float, form: str = "paper") -> torch.Tensor:
    """Smoothed one-hot targets.

    paper form (Eq. 3): q_i = 1 − ε on the true class, ε/(K − 1) on every other class.
    uniform form:       q_i = 1 − ε + ε/K on the true class, ε/K elsewhere — what GluonCV, timm
                        and `F.cross_entropy(label_smoothing=ε)` do. Paper form with ε equals
                        uniform form with ε' = ε·K/(K − 1).

    Args:
        labels: (N,) integer class indices.
        num_classes: K.
        eps: ε in [0, 1).
        form: "paper" or "uniform".
    Returns:
        (N, K) float targets, each row summing to 1.
    """
    if form == "paper":
        off, on = eps / (num_classes - 1), 1.0 - eps
    elif form == "uniform":
        off, on = eps / num_classes, 1.0 - eps + eps / num_classes
    else:
        raise ValueError(f"label smoothing form must be 'paper' or 'uniform', got {form!r}")
    targets = torch.full((labels.shape[0], num_classes), off, device=labels.device)
    return targets.scatter_(1, labels.unsqueeze(1), on)
