"""Training throughput per trick, against the plainest PyTorch loop, on synthetic data.

Every harness variant runs `bench.engine.loop.train_epoch` (the loop's own epoch: lr from the
schedule, the batch's mixing, the `Step` with autocast, `training_loss`, scaler, fused SGD, the
NaN guard), so the numbers are those of real runs. The reference is written separately below:
model, SGD, cross-entropy, nothing else. Variants are timed in interleaved rounds, so a load
change on a shared machine hits all of them alike; each ratio is the median over rounds of that
round's ratio.
"""
from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.config import RunConfig, schedule_for
from bench.engine import distributed as dist
from bench.engine.data import Data, TensorBatches
from bench.engine.evaluate import evaluate
from bench.engine.guard import LossGuard
from bench.engine.loop import train_epoch
from bench.engine.models import build_model
from bench.engine.step import autocast, build_optimizer, to_device
from bench.engine.training import LoopState, Training, seed_everything
from bench.errors import ConfigError
from bench.perf.summary import summarize
from bench.tricks import autocast_dtype

TRICKS = {"plain": {}, "label_smoothing": {"label_smoothing": {"eps": 0.1}}, "mixup": {"mixup": {"alpha": 0.2}},
          "distill": {"distill": {"teacher": "teacher", "temperature": 20.0}}}
TRICKS["all"] = {k: v for d in TRICKS.values() for k, v in d.items()}


@dataclass(frozen=True)
class BenchSettings:
    model: str = "resnet50d"
    teacher: str = "resnet152d"     # the paper's teacher of ResNet-50-D
    image_size: int = 224
    batch_size: int = 64
    precision: str = "bf16"
    device: str = "auto"
    channels_last: bool = True
    compile: bool = False
    deterministic: bool = False     # True: the harness's reproducible (slower on GPU) kernels
    num_classes: int = 1000
    warmup_steps: int = 3           # per variant, before the first timed round
    steps: int = 5                  # per variant and round
    rounds: int = 5
    probe_s: float = 1.0            # time spent measuring the loader and the matmul peak, each
    model_kwargs: dict = field(default_factory=dict)     # e.g. narrow widths for a tiny CI run
    teacher_kwargs: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in ("image_size", "batch_size", "num_classes", "steps", "rounds"):
            if getattr(self, name) < 1:
                raise ConfigError(f"bench --{name.replace('_', '-')} = {getattr(self, name)}: must be at least 1")
        if self.warmup_steps < 0:
            raise ConfigError(f"bench --warmup-steps = {self.warmup_steps}: must be at least 0")
        if self.precision not in ("fp32", "bf16", "fp16"):
            raise ConfigError(f"bench --precision = {self.precision!r}: one of fp32, bf16, fp16")

    def run_config(self, tricks: dict) -> RunConfig:
        """The harness config of a variant: the recipe's efficient settings plus `tricks`."""
        device = dist.local_device(self.device).type
        return RunConfig.model_validate({
            "model": {"name": self.model, "kwargs": self.model_kwargs},
            "data": {"global_batch_size": self.batch_size, "eval_batch_size": self.batch_size},
            "efficient": {"zero_gamma": True, "no_bias_decay": True, "precision": self.precision},
            "runtime": {"device": device, "channels_last": self.channels_last, "compile": self.compile,
                        "deterministic": self.deterministic},
            **tricks})


def synthetic_batches(s: BenchSettings, n: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`n` host batches of (B, 3, H, W) normal images and uniform labels, as a loader gives them."""
    g = torch.Generator().manual_seed(0)
    return [(torch.randn(s.batch_size, 3, s.image_size, s.image_size, generator=g),
             torch.randint(0, s.num_classes, (s.batch_size,), generator=g)) for _ in range(n)]


class SyntheticBatches:
    """`steps` host batches an epoch, cycling through a few fixed ones: a loader at no cost."""

    def __init__(self, batches: list[tuple[torch.Tensor, torch.Tensor]], steps: int = 1) -> None:
        self.batches, self.steps = batches, steps

    def __len__(self) -> int:
        return self.steps

    def epoch(self, epoch: int, start: int = 0):
        return (self.batches[i % len(self.batches)] for i in range(start, self.steps))


def harness_runner(base: Training, cfg: RunConfig) -> Callable[[int], torch.Tensor]:
    """`run(n)`: one epoch of n steps of the harness's own `train_epoch` with `cfg`'s tricks,
    on the shared model, optimizer and teacher of `base`; returns the loss sum (no sync)."""
    batches = SyntheticBatches(base.data.train.batches)
    t = dataclasses.replace(base, cfg=cfg, data=dataclasses.replace(base.data, train=batches))
    epochs = iter(range(10**9))

    def run(n: int) -> torch.Tensor:
        batches.steps = n
        return train_epoch(t, next(epochs)).loss_sum
    return run


def epoch_runner(t: Training, threads: int) -> Callable[[int], torch.Tensor]:
    """`run(_)`: one epoch of `t`'s own training batches (their count: the argument is ignored)
    through the harness's `train_epoch` at `threads`, in `time_rounds`' form; the loss sum (no sync)."""
    epochs = iter(range(10**9))

    def run(_steps: int) -> torch.Tensor:
        torch.set_num_threads(threads)
        return train_epoch(t, next(epochs)).loss_sum
    return run


def pytorch_runner(s: BenchSettings, model: nn.Module, batches, device) -> Callable[[int], torch.Tensor]:
    """The reference: the plainest loop with the same model, precision, memory format and SGD kernel."""
    fast = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-4, **fast)
    memory_format = torch.channels_last if s.channels_last else torch.contiguous_format
    dtype, state = autocast_dtype(s.precision), {"step": 0}

    def run(n: int) -> torch.Tensor:
        model.train()
        for _ in range(n):
            images, labels = batches[state["step"] % len(batches)]
            images = images.to(device, non_blocking=True).contiguous(memory_format=memory_format)
            labels = labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            state["step"] += 1
        return loss.detach()
    return run


def teacher_runner(s: BenchSettings, cfg: RunConfig, teacher: nn.Module, batches, device):
    """The teacher's forward pass alone, as `training_loss` runs it: the cost distillation may add."""
    def run(n: int) -> torch.Tensor:
        for i in range(n):
            images = to_device(batches[i % len(batches)][0], device, cfg.runtime.channels_last)
            with autocast(device, cfg.efficient.precision), torch.inference_mode():
                out = teacher(images)
        return out.float().sum()
    return run


def eval_runner(s: BenchSettings, cfg: RunConfig, model: nn.Module, batches, device):
    """`bench.engine.evaluate.evaluate` over n batches of `batches`."""
    images, labels = (torch.cat(parts) for parts in zip(*batches))

    def run(n: int) -> float:
        reps = -(-n // len(batches))
        data = TensorBatches(images.repeat(reps, 1, 1, 1), labels.repeat(reps), s.batch_size, max_batches=n)
        return evaluate(model, data, cfg, device)["val_loss"]
    return run


def measure_loader(s: BenchSettings, batches, device, seconds: float = 1.0) -> float:
    """Images/s of the harness's training loader (shuffle, random shift, moved to the device)."""
    images, labels = (torch.cat(parts) for parts in zip(*batches))
    loader = TensorBatches(images, labels, s.batch_size, shuffle=True, shift_px=4)
    seen, epoch, t0 = 0, 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        for x, _ in loader.epoch(epoch):
            x = to_device(x, device, s.channels_last)
            seen += len(x)
        epoch += 1
    sync(device)
    return seen / (time.perf_counter() - t0)


def matmul_peak_flop_per_s(device: torch.device, dtype: torch.dtype, n: int, seconds: float = 1.0) -> float:
    """Best FLOP/s of an n×n @ n×n matmul in `dtype`: the device's practical peak."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b
    best, t_end = 0.0, time.perf_counter() + seconds
    while best == 0.0 or time.perf_counter() < t_end:
        sync(device)
        t0 = time.perf_counter()
        a @ b
        sync(device)
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def count_train_flops(run_one: Callable[[int], torch.Tensor]) -> int:
    """FLOPs of one training step (forward + backward; matmuls and convolutions)."""
    with FlopCounterMode(display=False) as counter:
        run_one(1)
    return counter.get_total_flops()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_rounds(runners: dict[str, Callable], s: BenchSettings, device) -> dict[str, dict]:
    """Warm every runner up, then time `s.steps` calls of each, round-robin, `s.rounds` times."""
    times: dict[str, list[float]] = {name: [] for name in runners}
    peak_mib: dict[str, float] = {}
    for run in runners.values() if s.warmup_steps else ():
        run(s.warmup_steps)
        sync(device)
    for _ in range(s.rounds):
        for name, run in runners.items():
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            sync(device)
            t0 = time.perf_counter()
            out = run(s.steps)
            float(out)   # waits for the last step, as logging would
            sync(device)
            times[name].append(time.perf_counter() - t0)
            if device.type == "cuda":
                peak_mib[name] = max(peak_mib.get(name, 0.0), torch.cuda.max_memory_allocated(device) / 2**20)
    return {name: {"times_s": t, "peak_mem_mib": peak_mib.get(name)} for name, t in times.items()}


def build_training(s: BenchSettings, cfg: RunConfig, device: torch.device) -> tuple[Training, nn.Module]:
    """The harness's training state on synthetic batches (the student, its optimizer, the frozen
    teacher) and an identical model for the reference loop."""
    fmt = torch.channels_last if s.channels_last else torch.contiguous_format
    student = build_model(cfg.model, s.num_classes, 3, zero_gamma=True).to(device, memory_format=fmt)
    reference = build_model(cfg.model, s.num_classes, 3, zero_gamma=True).to(device, memory_format=fmt)
    teacher = build_model(cfg.model.model_copy(update={"name": s.teacher, "kwargs": s.teacher_kwargs}), s.num_classes)
    teacher = teacher.to(device, memory_format=fmt).eval().requires_grad_(False)
    data = Data(SyntheticBatches(synthetic_batches(s)), None, s.num_classes, 3, s.image_size)
    training = Training(cfg, data, device, student, student, build_optimizer(student, cfg, device),
                        torch.amp.GradScaler(device.type, enabled=s.precision == "fp16"), teacher,
                        schedule_for(cfg, 1), LoopState(np.random.default_rng(0), LossGuard(device)))
    return training, reference


def run_benchmark(s: BenchSettings, progress: Callable[[str], None] = lambda msg: None) -> dict:
    """Measure every variant; returns the JSON-ready result (see `bench.perf.commands.format_table`)."""
    device = dist.local_device(s.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("bench --device cuda: no CUDA device is available")
    seed_everything(0, s.deterministic)
    cfgs = {name: s.run_config(tricks) for name, tricks in TRICKS.items()}
    base, reference = build_training(s, cfgs["plain"], device)
    batches = base.data.train.batches
    # the NaN guard's check (one device sync) after every step, against the default's few per epoch
    cfgs["nan_check_every_step"] = cfgs["plain"].model_copy(
        update={"runtime": cfgs["plain"].runtime.model_copy(update={"nan_check_steps": 1})})
    runners = {name: harness_runner(base, cfg) for name, cfg in cfgs.items()}
    progress("counting FLOPs")
    flops = count_train_flops(runners["plain"])
    if s.compile:
        base.model.compile()
        reference.compile()
    runners = {"pytorch": pytorch_runner(s, reference, batches, device), **runners,
               "teacher_forward": teacher_runner(s, cfgs["plain"], base.teacher, batches, device),
               "eval": eval_runner(s, cfgs["plain"], base.model, batches, device)}
    progress(f"timing {len(runners)} variants: {s.warmup_steps} warm-up steps, {s.rounds} rounds of {s.steps} steps")
    timed = time_rounds(runners, s, device)
    progress("measuring the loader and the matmul peak")
    loader_ips = measure_loader(s, batches, device, s.probe_s)
    dtype = autocast_dtype(s.precision) or torch.float32
    peak = matmul_peak_flop_per_s(device, dtype, 8192 if device.type == "cuda" else 1024, s.probe_s)
    return summarize(s, device, timed, flops, peak, loader_ips)
