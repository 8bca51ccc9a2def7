"""Command line: run an ablation from a recipe, or regenerate its report."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from bench.errors import BenchError

DEFAULT_RECIPE = Path(__file__).resolve().parent.parent / "recipes" / "default.yaml"


def run_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="run_ablation.py", description=(
        "Train a recipe's cumulative ablation (teachers first) and tabulate top-1/top-5. "
        "Other commands: 'launch RECIPE --launcher local|torchrun|slurm', 'status RESULTS_DIR', 'report RESULTS_DIR', 'models', 'fake-data DIR', 'bench', 'bench-loader [DIR]'."))
    p.add_argument("recipe", nargs="?", default=str(DEFAULT_RECIPE), help="recipe YAML (default: %(default)s)")
    p.add_argument("--out", help="results directory (default: results/<recipe name>[-smoke])")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds to run (default: the recipe's)")
    p.add_argument("--only", nargs="+", metavar="STEP", help="run only these steps (and the teachers they need)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value in every run, e.g. --set schedule.epochs=5")
    p.add_argument("--smoke", action="store_true", help="2 epochs of 3 batches per run: check the pipeline")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--on-failure", choices=["continue", "stop"], default="continue",
                   help="when a run's loss becomes NaN/inf: go on with the runs that do not need it "
                        "(default), or stop; either way the exit status is 1")
    p.add_argument("--wandb", action=argparse.BooleanOptionalAction, default=None,
                   help="log every run to Weights & Biases (default: on when the recipe has a wandb: section)")
    return p


def cmd_run(argv: Sequence[str]) -> int:
    from bench.ablation import plan, run_ablation
    from bench.config import load_recipe, parse_override
    from bench.results import write_report

    args = run_parser().parse_args(argv)
    recipe = load_recipe(args.recipe)
    overrides = tuple(parse_override(text) for text in args.overrides)
    specs = plan(recipe, seeds=args.seeds, only=args.only, overrides=overrides, smoke=args.smoke, where=args.recipe)
    out = Path(args.out or Path("results") / (recipe.name + ("-smoke" if args.smoke else "")))
    print(f"{recipe.name}: {len(specs)} runs -> {out}", flush=True)
    from bench.tracking import choose_settings
    wandb = choose_settings(recipe.wandb, args.wandb)
    from bench.ablation import RunsFailed
    try:
        run_ablation(specs, out, progress=not args.no_progress, wandb=wandb, on_failure=args.on_failure)
        failure = None
    except RunsFailed as err:   # the finished runs are still tabulated
        failure = err
    from bench import dist
    if not dist.is_main():   # under torchrun / SLURM, rank 0 writes the report
        return 1 if failure else 0
    print(write_report(out))
    if failure:
        print(f"error: {failure}", file=sys.stderr)
        return 1
    print(f"wrote {out / 'runs.csv'} and {out / 'table.md'}")
    from bench.wandb_report import log_report
    log_report(wandb, out)
    return 0


def cmd_report(argv: Sequence[str]) -> int:
    from bench.results import write_report

    p = argparse.ArgumentParser(prog="run_ablation.py report", description="Regenerate tables from run directories.")
    p.add_argument("results_dir", nargs="?", help="with --from-wandb: where to write (default: results/GROUP-wandb)")
    p.add_argument("--from-wandb", metavar="ENTITY/PROJECT", help="rebuild from a W&B project's runs instead")
    p.add_argument("--group", help="with --from-wandb: the ablation's W&B group")
    p.add_argument("--no-figures", action="store_true", help="tables only (figures/ is left as it is)")
    args = p.parse_args(argv)
    if args.from_wandb or args.group:
        from bench.wandb_report import write_wandb_report
        if not (args.from_wandb and args.group):
            raise BenchError("report: --from-wandb ENTITY/PROJECT and --group NAME go together")
        out = Path(args.results_dir or Path("results") / f"{args.group}-wandb")
        print(write_wandb_report(args.from_wandb, args.group, out))
        print(f"wrote {out / 'runs.csv'} and {out / 'table.md'}")
        return 0
    if args.results_dir is None:
        p.error("the following arguments are required: results_dir")
    if not Path(args.results_dir).is_dir():
        raise BenchError(f"{args.results_dir}: no such results directory")
    print(write_report(Path(args.results_dir), figures=not args.no_figures))
    print(f"wrote runs.csv, table.md/.csv/.tex, deltas.csv{'' if args.no_figures else ' and figures/'} in {args.results_dir}")
    return 0


def cmd_models(argv: Sequence[str]) -> int:
    from bench.model_info import models_table

    p = argparse.ArgumentParser(prog="run_ablation.py models",
                                description="The paper's models (or NAMEs): parameters and GFLOPs (multiply-adds).")
    p.add_argument("names", nargs="*", metavar="NAME", help="timm names (default: the paper's models)")
    p.add_argument("--image-size", type=int, help="input size in px (default: each model's own)")
    args = p.parse_args(argv)
    print(models_table(args.names, args.image_size))
    return 0


def cmd_fake_data(argv: Sequence[str]) -> int:
    from bench.fakedata import write_fake_data

    p = argparse.ArgumentParser(prog="run_ablation.py fake-data", description=(
        "Write tiny data sets of random pixels in the real formats (ImageFolder JPEGs, CIFAR "
        "batches, Fashion-MNIST IDX) for smoke runs."))
    p.add_argument("dir")
    args = p.parse_args(argv)
    paths = write_fake_data(Path(args.dir))
    print(f"export IMAGENET_ROOT={paths['imagenet']} CIFAR_ROOT={paths['cifar']} FASHION_MNIST_ROOT={paths['fashion_mnist']}")
    return 0


def cmd_launch(argv: Sequence[str]) -> int:
    from bench.launch import cmd_launch as launch
    return launch(argv)


def cmd_status(argv: Sequence[str]) -> int:
    from bench.launch import cmd_status as status
    return status(argv)


def cmd_bench(argv: Sequence[str]) -> int:
    from bench.benchmark import cmd_bench as bench
    return bench(argv)


def cmd_bench_loader(argv: Sequence[str]) -> int:
    from bench.loaderbench import cmd_bench_loader as bench_loader
    return bench_loader(argv)


COMMANDS = {"launch": cmd_launch, "status": cmd_status, "report": cmd_report, "models": cmd_models, "fake-data": cmd_fake_data,
            "bench": cmd_bench, "bench-loader": cmd_bench_loader}


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = COMMANDS.get(argv[0]) if argv else None
    try:
        return command(argv[1:]) if command else cmd_run(argv)
    except BenchError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept; run the same command again to resume", file=sys.stderr)
        return 130
