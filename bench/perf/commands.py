"""The benchmark commands: `bench` (training images/s per trick), `bench-loader` (the
ImageFolder pipeline's images/s), `bench-threads` (steps/s alone and beside a second run) and
`bench-ablation` (a whole ablation's wall time),
each printing a table and recording JSON under results/bench/."""
from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Optional

import torch
from matplotlib.figure import Figure

from bench.config import load_recipe, parse_override
from bench.engine import distributed as dist
from bench.engine.runtime import available_cores
from bench.errors import ConfigError
from bench.perf.contention import format_contention, run_contention
from bench.perf.figures import plot_loader, plot_pipeline, plot_recipe_bench, plot_throughput, save_beside
from bench.perf.grid import format_grid, measure_grid
from bench.perf.loader import format_result, measure_loader, write_photo_tree
from bench.perf.pipeline import PATHS as PIPELINE_PATHS
from bench.perf.pipeline import format_pipeline, measure_pipeline
from bench.perf.recipe_bench import Variant, format_recipe_bench, measure_recipe
from bench.perf.throughput import BenchSettings, run_benchmark
from bench.perf.wall import CPU_KERNELS, format_wall, time_ablation
from bench.runs import refuse_existing, write_json
from bench.runs.environment import env_info


def format_table(r: dict) -> str:
    """The result as a Markdown table plus one line per summary number."""
    s = r["settings"]
    lines = [f"{s['model']} (teacher {s['teacher']}), {s['image_size']} px, batch {s['batch_size']}, {s['precision']}, "
             f"{'channels_last' if s['channels_last'] else 'contiguous'}, compile={s['compile']}, "
             f"{r['environment']['device']} ({r['environment']['device_name']}, {r['environment']['cpu_threads']} threads); "
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
              nan_check_line(r),
              f"peak process memory: {r['peak_rss_mib']:.0f} MiB",
              "targets: " + ", ".join(f"{k} {'yes' if ok else 'NO'}" for k, ok in r["targets_met"].items())]
    return "\n".join(lines)


def nan_check_line(r: dict) -> str:
    """What the NaN guard's check (one device sync) costs, alone and at the default interval."""
    if r["nan_check_s_per_check"] is None:
        return "NaN check: not measured (one step a round)"
    return (f"NaN check: {r['nan_check_s_per_check'] * 1e6:.0f} us per check; every "
            f"{r['nan_check_steps_default']} steps (the default) {100 * r['nan_check_cost_at_default']:.3f}% of a step")


def _show_and_record(table: str, result: dict, out: Optional[str], figure: Optional[Callable[[dict], Figure]] = None) -> int:
    """Print a benchmark's table; write its JSON result to `out` (a new file) when given, and
    its figure beside it (the same name, .png)."""
    print(table)
    if out:
        write_json(Path(out), result)
        print(f"wrote {out}")
        if figure is not None:
            print(f"wrote {save_beside(figure(result), out)}")
    return 0


def bench_parser() -> argparse.ArgumentParser:
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
    args = vars(bench_parser().parse_args(argv))
    out, width = args.pop("out"), args.pop("width")
    refuse_existing(out)
    if width is not None:
        if width < 1:
            raise ConfigError(f"bench --width = {width}: must be at least 1")
        narrow = {"channels": [width * 2**i for i in range(4)], "stem_width": width}
        args.update(model_kwargs=narrow, teacher_kwargs=narrow)
    result = run_benchmark(BenchSettings(**args), progress=lambda msg: print(msg, flush=True))
    return _show_and_record(format_table(result), result, out, plot_throughput)


def cmd_bench_loader(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="run_ablation.py bench-loader", description=(
        "Images/s of the ImageFolder training pipeline (decode, augmentation, DataLoader workers)."))
    p.add_argument("root", nargs="?", help="an ImageFolder tree (DIR/train/<class>/*); default: "
                   "generate ILSVRC-sized JPEGs in a temporary folder")
    p.add_argument("--images", type=int, default=256, help="JPEGs to generate when no root is given")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--seconds", type=float, default=5.0, help="time spent on each measurement")
    p.add_argument("--out", help="write the result as JSON to this new file")
    args = p.parse_args(argv)
    for name in ("images", "batch_size", "image_size"):
        if getattr(args, name) < 1:
            raise ConfigError(f"bench-loader --{name.replace('_', '-')} = {getattr(args, name)}: must be at least 1")
    if any(w < 0 for w in args.workers):
        raise ConfigError(f"bench-loader --workers {args.workers}: must be 0 or more")
    refuse_existing(args.out)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else write_photo_tree(Path(tmp), args.images)
        result = measure_loader(root, workers=args.workers, batch_size=args.batch_size, image_size=args.image_size,
                                seconds=args.seconds, progress=lambda msg: print(msg, flush=True))
    result["source"] = args.root or f"generated: {args.images} JPEGs of 500x375 px"
    result["environment"] = env_info(torch.device("cpu"))
    return _show_and_record(format_result(result), result, args.out, plot_loader)


def cmd_bench_pipeline(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="run_ablation.py bench-pipeline", description=(
        "Training images/s with the ImageFolder loader on each data path and worker count, against the "
        "same epoch on synthetic tensors."))
    p.add_argument("root", nargs="?", help="an ImageFolder tree (DIR/train/<class>/*); default: generated JPEGs")
    p.add_argument("--images", type=int, default=256, help="JPEGs to generate when no root is given")
    p.add_argument("--model", default="resnet50d")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--precision", default="bf16", choices=["fp32", "bf16", "fp16"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--paths", nargs="+", choices=list(PIPELINE_PATHS), default=list(PIPELINE_PATHS),
                   help="data paths to time (default: all)")
    p.add_argument("--steps", type=int, default=8, help="batches per epoch (one timed round)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--grid", action="store_true", help="every thread count x worker count on the first path, alone and two "
                   "jobs side by side (--seconds a window), on the CPU")
    p.add_argument("--seconds", type=float, default=15.0, help="--grid: the window each cell is counted in")
    p.add_argument("--out", help="write the result as JSON to this new file")
    args = p.parse_args(argv)
    if any(w < 0 for w in args.workers):
        raise ConfigError(f"bench-pipeline --workers {args.workers}: must be 0 or more")
    if args.grid:
        if args.seconds <= 0:
            raise ConfigError(f"bench-pipeline --seconds = {args.seconds}: must be positive")
        return _pipeline_grid(args)
    refuse_existing(args.out)
    settings = BenchSettings(model=args.model, image_size=args.image_size, batch_size=args.batch_size,
                             precision=args.precision, device=args.device, steps=args.steps, rounds=args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else write_photo_tree(Path(tmp), args.images)
        result = measure_pipeline(root, settings, args.workers, args.paths, progress=lambda msg: print(msg, flush=True))
    result["source"] = args.root or f"generated: {args.images} JPEGs of 500x375 px"
    result["environment"] = env_info(dist.local_device(args.device))
    return _show_and_record(format_pipeline(result), result, args.out, plot_pipeline)


def _pipeline_grid(args: argparse.Namespace) -> int:
    refuse_existing(args.out)
    settings = BenchSettings(model=args.model, image_size=args.image_size, batch_size=args.batch_size,
                             precision=args.precision, device="cpu", steps=args.steps)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(args.root) if args.root else write_photo_tree(Path(tmp), args.images)
        result = measure_grid(root, settings, args.workers, available_cores(), args.paths[0], args.seconds,
                              progress=lambda msg: print(msg, flush=True))
    result["source"] = args.root or f"generated: {args.images} JPEGs of 500x375 px"
    result["environment"] = env_info(torch.device("cpu"))
    return _show_and_record(format_grid(result), result, args.out)


def cmd_bench_threads(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="run_ablation.py bench-threads", description=(
        "Steps/s of a training process alone and with a second one beside it, with every core "
        "per process and with the thread budget (the cores shared between the two)."))
    p.add_argument("--cores", type=int, default=available_cores(), help="cores to share (default: this process's, %(default)s)")
    p.add_argument("--seconds", type=float, default=10.0, help="measurement window of each scenario")
    p.add_argument("--out", help="write the result as JSON to this new file")
    args = p.parse_args(argv)
    if args.cores < 1 or args.seconds <= 0:
        raise ConfigError(f"bench-threads --cores = {args.cores}, --seconds = {args.seconds}: must be positive")
    refuse_existing(args.out)
    result = run_contention(args.cores, args.seconds, progress=lambda msg: print(msg, flush=True))
    result["environment"] = env_info(torch.device("cpu"))
    return _show_and_record(format_contention(result), result, args.out)


def cmd_bench_recipe(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="run_ablation.py bench-recipe", description=(
        "Training images/s of a recipe's own runs (model, data, loader, loop) under variants of its settings."))
    p.add_argument("recipe")
    p.add_argument("--only", nargs="+", metavar="STEP", help="time only these steps' runs (and the teachers they need)")
    p.add_argument("--models", nargs="+", metavar="MODEL")
    p.add_argument("--seed", type=int, default=0, help="the seed of the runs timed (default: %(default)s)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value in every variant")
    p.add_argument("--variant", nargs="+", action="append", default=[], metavar=("NAME", "KEY.PATH=VALUE"),
                   help="a variant: its name, then its overrides (repeatable); the recipe as is comes first")
    p.add_argument("--images", type=int, default=10240, help="training images per timed round (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", help="write the result as JSON to this new file")
    args = p.parse_args(argv)
    refuse_existing(args.out)
    variants = [Variant("recipe")] + [Variant(v[0], tuple(parse_override(x) for x in v[1:])) for v in args.variant]
    recipe = load_recipe(args.recipe)
    result = measure_recipe(recipe, variants, select={"seeds": [args.seed], "only": args.only, "models": args.models},
                            base=tuple(parse_override(x) for x in args.overrides), images=args.images,
                            rounds=args.rounds, where=args.recipe, progress=lambda msg: print(msg, flush=True))
    result["command_overrides"] = args.overrides
    result["environment"] = env_info(torch.device("cpu"))
    return _show_and_record(format_recipe_bench(result), result, args.out, plot_recipe_bench)


def cmd_bench_ablation(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="run_ablation.py bench-ablation", description=(
        "Wall time of a whole ablation (run_ablation.py RECIPE ARGS in a fresh folder), and each run's top-1."))
    p.add_argument("recipe", help="the recipe, then any arguments of run_ablation.py (--set, --only, ...)")
    p.add_argument("--cpu-kernels", choices=sorted(CPU_KERNELS), default="native",
                   help="avx2: the AVX2 code of ATen, oneDNN and MKL (what an AVX2-only CPU runs) on a CPU with AVX-512")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--out", help="write the result as JSON to this new file")
    args, rest = p.parse_known_args(argv)
    if args.rounds < 1:
        raise ConfigError(f"bench-ablation --rounds = {args.rounds}: must be at least 1")
    refuse_existing(args.out)
    rounds = []
    print(f"timing run_ablation.py {args.recipe} {' '.join(rest)} in a fresh process and folder, {args.cpu_kernels} kernels, "
          f"{args.rounds} round(s)", flush=True)
    for i in range(args.rounds):
        rounds.append(time_ablation(args.recipe, rest, args.cpu_kernels))
        print(f"round {i}: {rounds[-1]['wall_s']:.1f} s", flush=True)
    result = {"recipe": args.recipe, "args": rest, "kernels_asked": args.cpu_kernels, "rounds": rounds,
              "cpu_kernels": rounds[0]["cpu_kernels"], "threads": rounds[0]["threads"],
              "recipe_text": Path(args.recipe).read_text(), "environment": env_info(torch.device("cpu"))}
    return _show_and_record(format_wall(result), result, args.out)
