"""Efficient training (He et al. 2019, Section 3.1): zero γ, no bias decay, low precision."""
from __future__ import annotations

from typing import Literal, Optional

import torch
from pydantic import Field
from torch import nn

from bench.strict import Strict


class EfficientConfig(Strict):
    zero_gamma: bool = False       # γ = 0 in the last BatchNorm of every residual block
    no_bias_decay: bool = False    # weight decay only on conv and linear weights
    # bf16/fp16: autocast, fp32 master weights. fp64: float64 weights and activations, for
    # numerical checks only (runs that must agree across launches and kernels), never for speed
    precision: Literal["fp32", "bf16", "fp16", "fp64"] = "fp32"
    # Ghost batch norm: training-mode BatchNorm statistics over fixed slices of this many images
    # of each device's batch (the paper: 128 per GPU), so the same recipe normalises alike on 1, 2
    # or 8 devices. None: over the whole per-device batch.
    bn_batch_size: Optional[int] = Field(None, gt=0)

    def tags(self) -> list[str]:
        """The refinements switched on, as run tags."""
        on = [name for name in ("zero_gamma", "no_bias_decay") if getattr(self, name)]
        return on + ([self.precision] if self.precision != "fp32" else [])


def zero_gamma(model: nn.Module) -> int:
    """Set γ = 0 in the last BatchNorm of every residual block, so each block starts as identity.

    Relies on timm's per-block `zero_init_last()` (BasicBlock: bn2, Bottleneck: bn3, and the
    equivalent in other residual families); models without residual blocks are unchanged.

    Returns:
        The number of blocks zeroed.
    """
    blocks = [m for m in model.modules() if callable(getattr(m, "zero_init_last", None))]
    for block in blocks:
        block.zero_init_last()
    return len(blocks)


def param_groups(model: nn.Module, weight_decay: float, no_bias_decay: bool = True) -> list[dict]:
    """Optimizer param groups: weight decay on conv and linear weights only when `no_bias_decay`.

    Biases and the γ, β of normalization layers (every parameter with fewer than 2 dimensions)
    get no decay, as in Section 3.1.

    Returns:
        [{"params": decayed, "weight_decay": wd}, {"params": others, "weight_decay": 0.0}],
        or a single group with `weight_decay` on everything when `no_bias_decay` is False.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    if not no_bias_decay:
        return [{"params": params, "weight_decay": weight_decay}]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a precision setting, None for fp32 and fp64 (no autocast)."""
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16, "fp64": None}[precision]


def weight_dtype(precision: str) -> torch.dtype:
    """The dtype of the weights and of the images fed to the model: float64 for fp64, else float32."""
    return torch.float64 if precision == "fp64" else torch.float32
