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
        "Other commands: 'report RESULTS_DIR'."))
    p.add_argument("recipe", nargs="?", default=str(DEFAULT_RECIPE), help="recipe YAML (default: %(default)s)")
    p.add_argument("--out", help="results directory (default: results/<recipe name>[-smoke])")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds to run (default: the recipe's)")
    p.add_argument("--only", nargs="+", metavar="STEP", help="run only these steps (and the teachers they need)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value in every run, e.g. --set schedule.epochs=5")
    p.add_argument("--smoke", action="store_true", help="2 epochs of 3 batches per run: check the pipeline")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
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
    run_ablation(specs, out, progress=not args.no_progress)
    from bench import dist
    if not dist.is_main():   # under torchrun / SLURM, rank 0 writes the report
        return 0
    print(write_report(out))
    print(f"wrote {out / 'runs.csv'} and {out / 'table.md'}")
    return 0


def cmd_report(argv: Sequence[str]) -> int:
    from bench.results import write_report

    p = argparse.ArgumentParser(prog="run_ablation.py report", description="Regenerate tables from run directories.")
    p.add_argument("results_dir")
    args = p.parse_args(argv)
    if not Path(args.results_dir).is_dir():
        raise BenchError(f"{args.results_dir}: no such results directory")
    print(write_report(Path(args.results_dir)))
    return 0


COMMANDS = {"report": cmd_report}


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
