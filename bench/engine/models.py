"""Models by timm name, with the small-input stem and the zero-γ switch the recipe asks for."""
from __future__ import annotations

import math
import os
import socket
from pathlib import Path
from typing import Any, Optional
from urllib.parse import urlparse

import timm
import torch
from timm.models import clean_state_dict
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.config import ModelConfig
from bench.errors import BenchError, first_line
from bench.runs import load_torch
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
        check_hub_reachable(f"model.pretrained = {cfg.pretrained} ({timm_name})")
    kwargs = dict(num_classes=num_classes, in_chans=in_chans, pretrained=bool(cfg.pretrained), **cfg.kwargs)
    try:
        try:
            model = timm.create_model(timm_name, zero_init_last=False, **kwargs)
        except TypeError as err:
            if "zero_init_last" not in str(err):
                raise BenchError(f"model {cfg.name!r} with kwargs {cfg.kwargs}: {err}") from None
            model = timm.create_model(timm_name, **kwargs)   # a family without residual zero-init
    except KeyError as err:   # a name timm looks up in its registries: act_layer: nope
        raise BenchError(f"model {cfg.name!r} with kwargs {cfg.kwargs}: unknown name {err}") from None
    except (RuntimeError, OSError, ValueError) as err:   # unknown tag, offline hub
        raise BenchError(f"model {timm_name!r} (pretrained={cfg.pretrained!r}): {first_line(err)}") from None
    if change is not None:
        change(model)
    if cfg.small_input:
        make_small_input(model)
    initialise(model, cfg.init)
    if zero_gamma:
        apply_zero_gamma(model)
    if cfg.checkpoint:
        load_weights(model, cfg.checkpoint, f"model {cfg.name} for {num_classes} classes", "model.checkpoint",
                     cfg.checkpoint_key)
    return model


def check_hub_reachable(what: str, timeout_s: float = 3.0) -> None:
    """Fail in seconds where the Hugging Face Hub cannot be reached (an offline node), instead of
    after huggingface_hub's minute of retries; with HF_HUB_OFFLINE set, timm reads the local cache."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    proxy = os.environ.get("HTTPS_PROXY") or os.environ.get("https_proxy")
    target = urlparse(proxy if proxy and "://" in proxy else f"http://{proxy}") if proxy else endpoint
    port = target.port or (443 if target.scheme == "https" else 80)
    try:
        socket.create_connection((target.hostname, port), timeout=timeout_s).close()
    except OSError as err:
        raise BenchError(f"{what}: the Hugging Face Hub ({target.hostname}:{port}) cannot be reached "
                         f"({first_line(err) or type(err).__name__}); set HF_HUB_OFFLINE=1 to load it from the local "
                         "cache (HF_HOME), or give model.checkpoint = a local weights file") from None


def initialise(model: nn.Module, scheme: str) -> nn.Module:
    """Every convolution's and linear layer's weights drawn anew, biases 0, normalisation γ = 1 and
    β = 0; "timm" keeps timm's own initialisation. With fan_in and fan_out as PyTorch and MXNet
    count them (channels × kernel area):
    - "xavier", the paper (Section 2.1): U[−a, a], a = √(6 / (fan_in + fan_out));
    - "msra_prelu", GluonCV's `mx.init.MSRAPrelu()`: N(0, σ²), σ² = 2 / (1 + 0.25²) / ((fan_in + fan_out) / 2).
    """
    if scheme == "timm":
        return model
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if scheme == "xavier":
                nn.init.xavier_uniform_(m.weight)
            else:   # Xavier's normal form with the PReLU gain (slope 0.25)
                nn.init.xavier_normal_(m.weight, gain=math.sqrt(2 / (1 + 0.25**2)))
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.LayerNorm)) and m.weight is not None:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return model


def load_weights(model: nn.Module, path: str | Path, what: str, source: Optional[str] = None,
                 key: Optional[str] = None) -> nn.Module:
    """Load weights into `model` from a file of the kinds teachers come in: a state dict (a
    run's model.pt), a run's last.pt ("model"), a checkpoint of timm's train.py ("state_dict",
    "state_dict_ema", with its `args`), or a safetensors file; the state dict is the one under
    `key` when given (`select_state_dict`). Keys saved from DistributedDataParallel ("module.")
    or torch.compile ("_orig_mod."), in either order, are matched to the bare model's.

    Every problem is one line naming the file (as `source = path` when given, e.g.
    "model.checkpoint"), and, for weights of another architecture or class count, the first
    mismatch against `what` (e.g. "teacher resnet26d for 10 classes").
    """
    label = f"{source} = {path}" if source else str(path)
    if not Path(path).is_file():
        raise BenchError(f"{label}: no such file")
    try:
        loaded = load_torch(Path(path))
    except BenchError as err:
        raise BenchError(f"{label}: {str(err).removeprefix(f'{path}: ')}") from None
    state = select_state_dict(loaded, key, label)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BenchError(f"{label}: not a state dict of model weights ({type(state).__name__})")
    state = clean_state_dict(state)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    shapes = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if shapes:
        k = shapes[0]
        raise BenchError(f"{label}: weights do not fit the {what}: {k} has shape {tuple(state[k].shape)}, "
                         f"the model expects {tuple(expected[k].shape)}")
    if missing or unexpected:
        detail = f"missing {missing[0]}" if missing else f"unexpected {unexpected[0]}"
        raise BenchError(f"{label}: weights do not fit the {what} (another architecture: {len(missing)} keys missing, "
                         f"{len(unexpected)} unexpected, e.g. {detail})")
    model.load_state_dict(state)
    return model


def select_state_dict(loaded: Any, key: Optional[str], label: str) -> Any:
    """The state dict in a loaded file: the entry `key` when given (e.g. "state_dict_ema" of a
    timm checkpoint); else the entry "model" (a run's last.pt), else "state_dict" (timm's
    train.py), else the file's own dict (a state dict, a safetensors file)."""
    if key is not None:
        if not isinstance(loaded, dict) or key not in loaded:
            present = sorted(map(str, loaded)) if isinstance(loaded, dict) else []
            shown = ", ".join(present[:12]) + (f", ... ({len(present)} in all)" if len(present) > 12 else "")
            raise BenchError(f"{label}: no entry {key!r} (model.checkpoint_key) in the file; it holds: {shown or 'no entries'}")
        return loaded[key]
    for default in ("model", "state_dict"):
        if isinstance(loaded, dict) and isinstance(loaded.get(default), dict):
            return loaded[default]
    return loaded


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


def measure_model(cfg: ModelConfig, image_size: int, num_classes: int = 1000, in_chans: int = 3) -> dict:
    """Parameters (M) and GFLOPs of one forward pass of one image.

    GFLOPs here are billions of multiply-adds, the paper's convention (Table 5: ResNet-50 3.8);
    PyTorch's counter counts a multiply-add as 2 FLOPs, hence the halving.
    """
    with torch.device("meta"):
        model = build_model(cfg.model_copy(update={"checkpoint": None, "pretrained": None}), num_classes, in_chans)
        x = torch.zeros(1, in_chans, image_size, image_size)
    with FlopCounterMode(display=False) as counter:
        model.eval()(x)
    return {"params_m": count_params(model) / 1e6, "gflops": counter.get_total_flops() / 2e9}


def family(name: str) -> Optional[str]:
    """The timm module a model comes from ("resnet" for resnet50, resnet50d and resnet152d), or None
    for a name timm does not know: models of one family run at a rate their FLOPs predict."""
    timm_name = LOCAL_MODELS.get(name, (name, None))[0]
    if not timm.is_model(timm_name):
        return None
    return timm.models.model_entrypoint(timm_name).__module__.rsplit(".", 1)[-1]
