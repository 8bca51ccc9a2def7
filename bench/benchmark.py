"""Training throughput per trick, against the plainest PyTorch loop, on synthetic data.

Every harness variant runs `bench.train.train_step` (the loop's own step: lr from `lr_at`,
autocast, `training_loss`, scaler, fused SGD), so the numbers are those of real runs. The
reference is written separately below: model, SGD, cross-entropy, nothing else. Variants are
timed in interleaved rounds, so a load change on a shared machine hits all of them alike;
each ratio is the median over rounds of that round's ratio.
"""
from __future__ import annotations

import platform
import resource
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from bench.config import RunConfig
from bench.data import TensorBatches
from bench.errors import ConfigError
from bench.models import build_model
from bench.train import (autocast, build_optimizer, evaluate, lr_at, pick_device, sample_mixing, seed_everything,
                         to_device, train_step)
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
        device = pick_device(self.device).type
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


def harness_runner(s: BenchSettings, cfg: RunConfig, model: nn.Module, optimizer, scaler, batches, device,
                   teacher: Optional[nn.Module]) -> Callable[[int], torch.Tensor]:
    """`run(n)`: n steps of the harness's loop body (lr, mixing, `train_step`, loss sum)."""
    schedule = dict(peak_lr=cfg.peak_lr(), total_steps=10**9, warmup_steps=0, kind="cosine", milestones=[], gamma=0.1)
    rng, state = np.random.default_rng(0), {"step": 0}

    def run(n: int) -> torch.Tensor:
        model.train()
        loss_sum = torch.zeros((), device=device)
        for _ in range(n):
            images, labels = batches[state["step"] % len(batches)]
            lr = lr_at(state["step"], **schedule)
            mixing = sample_mixing(len(labels), cfg.mixup.alpha, rng) if cfg.mixup is not None else None
            loss = train_step(model, optimizer, scaler, images, labels, lr, cfg, s.num_classes, device, mixing, teacher)
            loss_sum += loss * len(labels)
            state["step"] += 1
        return loss_sum
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
    """`bench.train.evaluate` over n batches of `batches`."""
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])

    def run(n: int) -> float:
        reps = -(-n // len(batches))
        data = TensorBatches(images.repeat(reps, 1, 1, 1), labels.repeat(reps), s.batch_size, max_batches=n)
        return evaluate(model, data, cfg, device)["val_loss"]
    return run


def measure_loader(s: BenchSettings, batches, device, seconds: float = 1.0) -> float:
    """Images/s of the harness's training loader (shuffle, random shift, moved to the device)."""
    images = torch.cat([b[0] for b in batches])
    labels = torch.cat([b[1] for b in batches])
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


def build_models(s: BenchSettings, cfg: RunConfig, device: torch.device) -> tuple[nn.Module, nn.Module, nn.Module]:
    """Student, an identical model for the reference loop, and the frozen teacher."""
    memory_format = torch.channels_last if s.channels_last else torch.contiguous_format
    student = build_model(cfg.model, s.num_classes, 3, zero_gamma=True).to(device, memory_format=memory_format)
    reference = build_model(cfg.model, s.num_classes, 3, zero_gamma=True).to(device, memory_format=memory_format)
    teacher = build_model(cfg.model.model_copy(update={"name": s.teacher, "kwargs": s.teacher_kwargs}), s.num_classes)
    teacher = teacher.to(device, memory_format=memory_format).eval().requires_grad_(False)
    return student, reference, teacher


def run_benchmark(s: BenchSettings, progress: Callable[[str], None] = lambda msg: None) -> dict:
    """Measure every variant; returns the JSON-ready result (see `format_table`)."""
    device = pick_device(s.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("bench --device cuda: no CUDA device is available")
    seed_everything(0, s.deterministic)
    cfgs = {name: s.run_config(tricks) for name, tricks in TRICKS.items()}
    student, reference, teacher = build_models(s, cfgs["plain"], device)
    batches = synthetic_batches(s)
    optimizer = build_optimizer(student, cfgs["plain"], device)
    scaler = torch.amp.GradScaler(device.type, enabled=s.precision == "fp16")
    runners = {name: harness_runner(s, cfg, student, optimizer, scaler, batches, device, teacher)
               for name, cfg in cfgs.items()}
    progress("counting FLOPs")
    flops = count_train_flops(runners["plain"])
    if s.compile:
        student.compile()
        reference.compile()
    runners = {"pytorch": pytorch_runner(s, reference, batches, device), **runners,
               "teacher_forward": teacher_runner(s, cfgs["plain"], teacher, batches, device),
               "eval": eval_runner(s, cfgs["plain"], student, batches, device)}
    progress(f"timing {len(runners)} variants: {s.warmup_steps} warm-up steps, {s.rounds} rounds of {s.steps} steps")
    timed = time_rounds(runners, s, device)
    progress("measuring the loader and the matmul peak")
    loader_ips = measure_loader(s, batches, device, s.probe_s)
    dtype = autocast_dtype(s.precision) or torch.float32
    peak = matmul_peak_flop_per_s(device, dtype, 8192 if device.type == "cuda" else 1024, s.probe_s)
    return summarize(s, device, timed, flops, peak, loader_ips)


def _median_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of time(b) / time(a): the throughput of a relative to b."""
    return statistics.median(tb / ta for ta, tb in zip(a, b))


def summarize(s: BenchSettings, device, timed: dict, flops: int, peak: float, loader_ips: float) -> dict:
    variants = {}
    for name, t in timed.items():
        ips = [s.steps * s.batch_size / x for x in t["times_s"]]
        variants[name] = {
            "images_per_s": statistics.median(ips), "images_per_s_min": min(ips), "images_per_s_max": max(ips),
            "step_time_s": statistics.median(t["times_s"]) / s.steps,
            "ratio_to_plain": _median_ratio(t["times_s"], timed["plain"]["times_s"]),
            "ratio_to_pytorch": _median_ratio(t["times_s"], timed["pytorch"]["times_s"]),
            "peak_mem_mib": t["peak_mem_mib"]}
    step_s = variants["plain"]["step_time_s"]
    extra = [(d - p) / s.steps for d, p in zip(timed["distill"]["times_s"], timed["plain"]["times_s"])]
    r = {
        "settings": asdict(s), "environment": environment(device), "variants": variants,
        "train_flop_per_step": flops, "achieved_flop_per_s": flops / step_s, "matmul_peak_flop_per_s": peak,
        "flop_utilization": flops / step_s / peak,
        "loader_images_per_s": loader_ips, "loader_ratio_to_step": loader_ips / variants["plain"]["images_per_s"],
        "distill_extra_s_per_step": statistics.median(extra),
        "teacher_forward_s_per_step": variants["teacher_forward"]["step_time_s"],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    v = variants
    r["targets_met"] = {
        "harness_within_3pct_of_pytorch": v["plain"]["ratio_to_pytorch"] >= 0.97,
        "label_smoothing_under_2pct": v["label_smoothing"]["ratio_to_plain"] >= 0.98,
        "mixup_under_2pct": v["mixup"]["ratio_to_plain"] >= 0.98,
        "distill_at_most_teacher_forward": r["distill_extra_s_per_step"] <= 1.02 * r["teacher_forward_s_per_step"],
        "loader_at_least_1_5x_step": r["loader_ratio_to_step"] >= 1.5,
    }
    return r


def environment(device: torch.device) -> dict:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else (platform.processor() or platform.machine())
    return {"device": str(device), "device_name": name, "torch": torch.__version__,
            "threads": torch.get_num_threads(), "python": platform.python_version(),
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}


def format_table(r: dict) -> str:
    """The result as a Markdown table plus one line per summary number."""
    s = r["settings"]
    lines = [f"{s['model']} (teacher {s['teacher']}), {s['image_size']} px, batch {s['batch_size']}, {s['precision']}, "
             f"{'channels_last' if s['channels_last'] else 'contiguous'}, compile={s['compile']}, "
             f"{r['environment']['device']} ({r['environment']['device_name']}, {r['environment']['threads']} threads); "
             f"median of {s['rounds']} rounds of {s['steps']} steps",
             "", "| variant | images/s (min-max) | ratio_to_plain | ratio_to_pytorch | peak mem (MiB) |",
             "|---|---|---|---|---|"]
    for name, v in r["variants"].items():
        mem = "" if v["peak_mem_mib"] is None else f"{v['peak_mem_mib']:.0f}"
        lines.append(f"| {name} | {v['images_per_s']:.1f} ({v['images_per_s_min']:.1f}-{v['images_per_s_max']:.1f}) "
                     f"| {v['ratio_to_plain']:.3f} | {v['ratio_to_pytorch']:.3f} | {mem} |")
    lines += ["",
              f"training step: {r['train_flop_per_step'] / 1e9:.1f} GFLOP, {r['achieved_flop_per_s'] / 1e9:.1f} GFLOP/s "
              f"= {100 * r['flop_utilization']:.1f}% of the {r['matmul_peak_flop_per_s'] / 1e9:.1f} GFLOP/s matmul peak",
              f"distillation adds {r['distill_extra_s_per_step'] * 1e3:.1f} ms/step; the teacher's forward takes "
              f"{r['teacher_forward_s_per_step'] * 1e3:.1f} ms/step",
              f"loader: {r['loader_images_per_s']:.0f} images/s = {r['loader_ratio_to_step']:.1f}x the plain step",
              f"peak process memory: {r['peak_rss_mib']:.0f} MiB",
              "targets: " + ", ".join(f"{k} {'yes' if ok else 'NO'}" for k, ok in r["targets_met"].items())]
    return "\n".join(lines)


def bench_parser():
    import argparse
    d = BenchSettings()
    p = argparse.ArgumentParser(prog="run_ablation.py bench", description=(
        "Training images/s per trick against a plain PyTorch loop, on synthetic data."))
    p.add_argument("--model", default=d.model)
    p.add_argument("--teacher", default=d.teacher, help="the distillation teacher (default: %(default)s)")
    p.add_argument("--image-size", type=int, default=d.image_size)
    p.add_argument("--batch-size", type=int, default=d.batch_size)
    p.add_argument("--precision", default=d.precision, choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default=d.device, choices=["auto", "cpu", "cuda"])
    p.add_argument("--no-channels-last", dest="channels_last", action="store_false")
    p.add_argument("--compile", action="store_true", help="torch.compile student and reference")
    p.add_argument("--deterministic", action="store_true", help="the harness's reproducible kernels")
    p.add_argument("--num-classes", type=int, default=d.num_classes)
    p.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    p.add_argument("--steps", type=int, default=d.steps, help="steps per variant and round")
    p.add_argument("--rounds", type=int, default=d.rounds)
    p.add_argument("--width", type=int, help="narrow every model: first stage channels (tiny runs)")
    p.add_argument("--out", help="write the result as JSON to this new file")
    return p


def cmd_bench(argv) -> int:
    from pathlib import Path

    from bench.runs import refuse_existing, write_json

    args = vars(bench_parser().parse_args(argv))
    out, width = args.pop("out"), args.pop("width")
    refuse_existing(out)
    if width is not None:
        if width < 1:
            raise ConfigError(f"bench --width = {width}: must be at least 1")
        narrow = {"channels": [width * 2**i for i in range(4)], "stem_width": width}
        args.update(model_kwargs=narrow, teacher_kwargs=narrow)
    result = run_benchmark(BenchSettings(**args), progress=lambda msg: print(msg, flush=True))
    print(format_table(result))
    if out:
        write_json(Path(out), result)
        print(f"wrote {out}")
    return 0
