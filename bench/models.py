"""Models by timm name, with the small-input stem and the zero-γ switch the recipe asks for."""
from __future__ import annotations

import timm
import torch
from torch import nn

from bench.config import ModelConfig
from bench.errors import BenchError
from bench.tricks import zero_gamma as apply_zero_gamma


def build_model(cfg: ModelConfig, num_classes: int, in_chans: int = 3, zero_gamma: bool = False) -> nn.Module:
    """A timm model for `num_classes` classes.

    timm initialises the last BatchNorm of residual blocks to γ = 0 by default; here that
    happens only when `zero_gamma` asks for it, so the baseline really starts with γ = 1.
    """
    if not timm.is_model(cfg.name):
        close = timm.list_models(f"*{cfg.name.split('_')[0][:6]}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise BenchError(f"model.name = {cfg.name!r}: unknown timm model{hint}")
    kwargs = dict(num_classes=num_classes, in_chans=in_chans, **cfg.kwargs)
    try:
        model = timm.create_model(cfg.name, zero_init_last=False, **kwargs)
    except TypeError as err:
        if "zero_init_last" not in str(err):
            raise BenchError(f"model {cfg.name!r} with kwargs {cfg.kwargs}: {err}") from None
        model = timm.create_model(cfg.name, **kwargs)   # a family without residual zero-init
    if cfg.small_input:
        make_small_input(model)
    if zero_gamma:
        apply_zero_gamma(model)
    return model


def make_small_input(model: nn.Module) -> nn.Module:
    """Stride 1 in the stem's first convolution and no stem max-pool, for 8-32 px images
    (the CIFAR convention of He et al. 2016), so the last stage still sees more than 1 px."""
    first_conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
    first_conv.stride = (1, 1)
    if isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
        model.maxpool = nn.Identity()
    return model


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def check_output(model: nn.Module, in_chans: int, image_size: int, num_classes: int) -> None:
    """One forward pass on a dummy batch, to fail before training rather than during it."""
    model.eval()
    out = model(torch.zeros(2, in_chans, image_size, image_size))
    if out.shape != (2, num_classes):
        raise BenchError(f"model output shape {tuple(out.shape)} != (batch, {num_classes})")
