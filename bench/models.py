"""Models by timm name, with the small-input stem and the zero-γ switch the recipe asks for."""
from __future__ import annotations

import timm
import torch
from torch import nn

from bench.config import ModelConfig
from bench.errors import BenchError
from bench.tricks import zero_gamma as apply_zero_gamma


def stride_on_first_1x1(model: nn.Module) -> nn.Module:
    """The original ResNet (He et al. 2016): a downsampling bottleneck strides in its first 1×1
    convolution, not in the 3×3 as timm's (ResNet-B, Table 5, Fig. 2a)."""
    for block in model.modules():
        conv1, conv2 = getattr(block, "conv1", None), getattr(block, "conv2", None)
        if isinstance(conv1, nn.Conv2d) and isinstance(conv2, nn.Conv2d) and conv2.stride != (1, 1) \
                and conv1.kernel_size == (1, 1) and hasattr(block, "conv3"):
            conv1.stride, conv2.stride = conv2.stride, (1, 1)
    return model


# Models that are a timm model plus a change: name -> (timm name, change).
LOCAL_MODELS = {"resnet50_v1": ("resnet50", stride_on_first_1x1)}


def build_model(cfg: ModelConfig, num_classes: int, in_chans: int = 3, zero_gamma: bool = False) -> nn.Module:
    """A timm model (or one of LOCAL_MODELS) for `num_classes` classes, with the weights of
    `cfg.checkpoint` or the timm tag `cfg.pretrained` when set.

    timm initialises the last BatchNorm of residual blocks to γ = 0 by default; here that
    happens only when `zero_gamma` asks for it, so the baseline really starts with γ = 1.
    """
    timm_name, change = LOCAL_MODELS.get(cfg.name, (cfg.name, None))
    if not timm.is_model(timm_name):
        close = timm.list_models(f"*{cfg.name.split('_')[0][:6]}*")[:5]
        hint = f" (similar: {', '.join(close)})" if close else ""
        raise BenchError(f"model.name = {cfg.name!r}: unknown timm model{hint}")
    if cfg.pretrained:
        timm_name = f"{timm_name}.{cfg.pretrained}"
    kwargs = dict(num_classes=num_classes, in_chans=in_chans, pretrained=bool(cfg.pretrained), **cfg.kwargs)
    try:
        try:
            model = timm.create_model(timm_name, zero_init_last=False, **kwargs)
        except TypeError as err:
            if "zero_init_last" not in str(err):
                raise BenchError(f"model {cfg.name!r} with kwargs {cfg.kwargs}: {err}") from None
            model = timm.create_model(timm_name, **kwargs)   # a family without residual zero-init
    except (RuntimeError, OSError, ValueError) as err:   # unknown tag, offline hub
        raise BenchError(f"model {timm_name!r} (pretrained={cfg.pretrained!r}): {str(err).splitlines()[0]}") from None
    if change is not None:
        change(model)
    if cfg.small_input:
        make_small_input(model)
    if zero_gamma:
        apply_zero_gamma(model)
    if cfg.checkpoint:
        load_weights(model, cfg.checkpoint)
    return model


def load_weights(model: nn.Module, path: str) -> nn.Module:
    """Weights from a state dict file, a checkpoint holding one under "model", or either saved
    from a DistributedDataParallel model ("module." prefixes)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BenchError(f"model.checkpoint = {path}: no such file") from None
    except Exception as err:   # pickle, zip and torch errors alike
        raise BenchError(f"model.checkpoint = {path}: unreadable ({type(err).__name__}: {str(err).splitlines()[0]})") from None
    if isinstance(state, dict) and isinstance(state.get("model"), dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise BenchError(f"model.checkpoint = {path}: holds a {type(state).__name__}, not a state dict")
    state = {k.removeprefix("module."): v for k, v in state.items()}
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        detail = " ".join(str(err).split())[:200]
        raise BenchError(f"model.checkpoint = {path}: does not fit the model ({detail})") from None
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
