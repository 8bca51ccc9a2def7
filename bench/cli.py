"""The command line: `run_ablation.py`, `python -m bench` and the `run-ablation` console command.

    [run] RECIPE        train a recipe's ablation here and tabulate it (the default command)
    plan RECIPE         every run it would train, with its settings and cost; nothing is run
    launch RECIPE       the same, locally, with torchrun, or as SLURM jobs
    status DIR          the state of every run of a launched ablation
    report DIR          rebuild the tables and figures from run directories (or W&B)
    models, fake-data, bench, bench-ablation, bench-loader, bench-pipeline, bench-recipe, bench-threads, fidelity, gpu-check
"""
from __future__ import annotations

import argparse
import difflib
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

from bench.ablation import RunsFailed, RunSpec, plan, run_ablation
from bench.ablation.designs import DESIGNS
from bench.ablation.execute import check_writable
from bench.ablation.launch import launch_slurm, load_cluster, merge_manifest, torchrun_command
from bench.ablation.preview import format_plan, plan_table, read_bench_json, table3_rates
from bench.ablation.status import MANIFEST, ablation_status, discovered_runs, format_status, runs
from bench.ablation.tracking import for_sweep
from bench.ablation.wandb_connect import choose_settings, sweep_run_id
from bench.config import WandbConfig, load_recipe, parse_override, with_bare_overrides
from bench.engine import distributed as dist
from bench.engine.data.fake import write_fake_data
from bench.errors import BenchError
from bench.fidelity import fidelity_main
from bench.perf.commands import cmd_bench, cmd_bench_ablation, cmd_bench_loader, cmd_bench_pipeline, cmd_bench_recipe, cmd_bench_threads
from bench.perf.gpu_check import gpu_check_main
from bench.perf.model_info import models_table
from bench.report import write_report
from bench.report.compare import compare_main, measured_noise
from bench.report.frames import load_paper
from bench.report.power import seeds_sentence
from bench.report.wandb import write_wandb_report
from bench.report.wandb_summary import log_report
from bench.runs import atomic_write

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_RECIPE = ROOT / "recipes" / "default.yaml"


def add_selection(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments that choose the runs: recipe, seeds, steps, models, overrides, smoke."""
    p.add_argument("recipe", nargs="?", default=str(DEFAULT_RECIPE), help="recipe YAML (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds to run (default: the recipe's)")
    p.add_argument("--only", nargs="+", metavar="STEP", help="run only these steps (and the teachers they need)")
    p.add_argument("--models", nargs="+", metavar="MODEL", help="run only these model columns of the recipe")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY.PATH=VALUE",
                   help="override a config value in every run, e.g. --set schedule.epochs=5 (or a bare schedule.epochs=5)")
    p.add_argument("--smoke", action="store_true", help="2 epochs of 3 batches per run: check the pipeline")
    p.add_argument("--design", choices=DESIGNS, help="which runs (default: the recipe's design:; docs/designs.md)")
    p.add_argument("--tricks", nargs="+", metavar="STEP", help="a design's tricks (default: the last step's chain)")
    return p


def run_parser() -> argparse.ArgumentParser:
    p = add_selection(argparse.ArgumentParser(prog="run_ablation.py", description=(
        "Train a recipe's cumulative ablation (teachers first) and tabulate top-1/top-5. "
        "Other commands: 'plan RECIPE', 'launch RECIPE --launcher local|torchrun|slurm', 'status RESULTS_DIR', "
        "'report RESULTS_DIR', 'models', 'fake-data DIR', 'bench', 'bench-loader [DIR]', 'bench-pipeline', 'bench-recipe RECIPE', 'bench-threads', "
        "'fidelity', 'gpu-check'.")))
    p.add_argument("--out", help="results directory (default: runs/<recipe name>[-smoke], which git ignores)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    p.add_argument("--on-failure", choices=["continue", "stop"], default="continue",
                   help="when a run's loss becomes NaN/inf: go on with the runs that do not need it "
                        "(default), or stop; either way the exit status is 1")
    p.add_argument("--wandb", action=argparse.BooleanOptionalAction, default=None,
                   help="log every run to Weights & Biases (default: on when the recipe has a wandb: section)")
    return p


def parse(p: argparse.ArgumentParser, argv: Sequence[str]) -> argparse.Namespace:
    """`p`'s arguments, a bare `key.path=value` read as `--set key.path=value` (as `wandb agent` passes them)."""
    takes_value = {s for action in p._actions if action.nargs is None for s in action.option_strings}
    return p.parse_args(with_bare_overrides(list(argv), takes_value))


def planned(args: argparse.Namespace) -> tuple[str, list[RunSpec], Path]:
    """The recipe's name, its planned runs and the results directory of parsed run arguments."""
    recipe = load_recipe(args.recipe)
    overrides = tuple(parse_override(text) for text in args.overrides)
    specs = plan(recipe, seeds=args.seeds, only=args.only, models=args.models, overrides=overrides,
                 smoke=args.smoke, where=args.recipe, design=args.design, tricks=args.tricks)
    out = Path(getattr(args, "out", None) or Path("runs") / (recipe.name + ("-smoke" if args.smoke else "")))
    return recipe, specs, out


def cmd_run(argv: Sequence[str]) -> int:
    args = parse(run_parser(), argv)
    recipe, specs, out = planned(args)
    wandb = choose_settings(recipe.wandb, args.wandb)
    if sweep_run_id() is not None and args.wandb is not False:   # started by `wandb agent`: log to its run
        base = Path(args.out or Path("runs") / f"{recipe.name}-sweep-{os.environ['WANDB_SWEEP_ID']}")
        wandb, out = for_sweep(wandb or WandbConfig(), specs, base)
    print(f"{recipe.name}: {runs(len(specs))} -> {out}", flush=True)
    fresh, main = not out.exists(), dist.read_env().rank == 0   # before init: no is_main
    manifest = out / MANIFEST
    before = manifest.read_bytes() if manifest.is_file() else None
    if main:   # `status DIR` lists every run, the ones not started too
        check_writable(out)
        merge_manifest(specs, out, "local", recipe.name)
    try:
        run_ablation(specs, out, progress=not args.no_progress, wandb=wandb, on_failure=args.on_failure)
        failure = None
    except RunsFailed as err:   # the finished runs are still tabulated
        failure = err
    except BenchError:   # bad input found at start-up leaves the directory as it was
        if main:
            if before is None:
                manifest.unlink(missing_ok=True)
            else:
                atomic_write(manifest, lambda f: f.write(before))
            if fresh and not discovered_runs(out):
                shutil.rmtree(out, ignore_errors=True)
        raise
    if not dist.is_main():   # under torchrun / SLURM, rank 0 writes the report
        return 1 if failure else 0
    print(write_report(out))
    if failure:
        print(f"error: {failure}", file=sys.stderr)
        return 1
    print(f"wrote {out / 'runs.csv'} and {out / 'table.md'}")
    log_report(wandb, out)
    return 0


def cmd_plan(argv: Sequence[str]) -> int:
    """Every run the command would train, its settings and its cost; nothing is trained or written."""
    p = add_selection(argparse.ArgumentParser(prog="run_ablation.py plan", description=(
        "Show every run of a recipe in launch order: the step it builds on, what it changes, its effective "
        "settings, the training images it processes and its device-hours at a measured rate or the paper's. "
        "Nothing is trained or written.")))
    p.add_argument("--format", choices=["md", "csv"], default="md", help="Markdown table (default) or CSV")
    p.add_argument("--bench", action="append", default=[], metavar="JSON",
                   help="a 'bench' command's JSON: its rate for its model, crop and precision, scaled by FLOPs to "
                        "other models of the family (repeatable; before --paper-times)")
    p.add_argument("--paper-times", action="store_true",
                   help="rates from the paper's Table 3 times per epoch on 8 V100s (fp16 and fp32), scaled by FLOPs")
    p.add_argument("--detect", type=float, metavar="DELTA",
                   help="also say how many seeds per step find a Δ top-1 of DELTA points at 80%% power (needs --noise)")
    p.add_argument("--noise", metavar="RESULTS_DIR", help="a results folder or pilot whose seeds measure the noise of a Δ")
    args = parse(p, argv)
    noise = measured_noise(args.detect, args.noise) if args.detect is not None else None
    recipe, specs, _ = planned(args)
    rates = [read_bench_json(path) for path in args.bench] + (table3_rates(load_paper("table3")) if args.paper_times else [])
    print(format_plan(plan_table(specs, rates), args.format), end="")
    if noise is not None:
        print("\n" + seeds_sentence(args.detect, *noise, len({s.seed for s in specs if s.role != "teacher"}), args.noise))
    return 0


def cmd_launch(argv: Sequence[str]) -> int:
    p = run_parser()
    p.prog, p.description = "run_ablation.py launch", "Launch an ablation locally, with torchrun, or on SLURM."
    p.add_argument("--launcher", choices=["local", "torchrun", "slurm"], help="default: the cluster file's, else local")
    p.add_argument("--cluster", help="cluster settings YAML (e.g. recipes/cluster/slurm.yaml)")
    p.add_argument("--partition")
    p.add_argument("--nodes", type=int)
    p.add_argument("--gpus-per-node", type=int)
    p.add_argument("--time", type=int, dest="time_min", metavar="MIN", help="wall-time limit of each job, minutes")
    p.add_argument("--nproc-per-node", type=int, help="torchrun: processes on this node")
    args = parse(p, argv)
    cluster = load_cluster(args.cluster, {k: getattr(args, k) for k in (
        "launcher", "partition", "nodes", "gpus_per_node", "time_min", "nproc_per_node")})
    recipe, specs, out = planned(args)
    out = out.resolve()
    if cluster.launcher == "slurm" and shutil.which("sbatch") is None:
        raise BenchError("--launcher slurm: sbatch not found; run this on a SLURM login node")
    check_writable(out)
    merge_manifest(specs, out, cluster.launcher, recipe.name)
    run_argv = [str(Path(args.recipe).resolve()), "--out", str(out), *(["--smoke"] if args.smoke else []),
                *(["--no-progress"] if args.no_progress else []),
                *(["--seeds", *map(str, args.seeds)] if args.seeds else []),
                *(["--only", *args.only] if args.only else []),
                *(["--design", args.design] if args.design else []), *(["--tricks", *args.tricks] if args.tricks else []),
                *(["--models", *args.models] if args.models else []),
                *[x for text in args.overrides for x in ("--set", text)]]
    if cluster.launcher == "local":
        return cmd_run(run_argv)
    if cluster.launcher == "torchrun":
        return subprocess.run(torchrun_command(cluster.nproc_per_node, run_argv)).returncode
    print(f"{recipe.name}: {runs(len(specs))} -> {out}", flush=True)
    launch_slurm(specs, out, cluster)
    print(f"follow with: python run_ablation.py status {out}")
    return 0


def cmd_status(argv: Sequence[str]) -> int:
    """Every run's state; the report once all finished."""
    p = argparse.ArgumentParser(prog="run_ablation.py status", description=(
        "State of every run of a results directory (run here, with torchrun, or on SLURM): finished, "
        "running (epoch, lock holder), pending, failed (why), interrupted, not started."))
    p.add_argument("results_dir")
    args = p.parse_args(argv)
    out = Path(args.results_dir)
    if not out.is_dir():
        raise BenchError(f"{out}: no such results directory")
    rows = ablation_status(out)
    print(format_status(rows))
    if all(r["state"] == "finished" for r in rows):
        try:
            print(write_report(out))
            print(f"all {runs(len(rows))} finished: wrote {out / 'runs.csv'} and {out / 'table.md'}")
        except BenchError as err:   # a folder the user may read, not write: the status stands
            print(f"all {runs(len(rows))} finished; the tables were not written: {err} "
                  f"(`report {out} --out DIR` writes them elsewhere)")
    return 1 if any(r["state"] == "failed" for r in rows) else 0


def cmd_report(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="run_ablation.py report", description="Regenerate tables from run directories.")
    p.add_argument("results_dir", nargs="?", help="with --from-wandb: where to write (default: runs/GROUP-wandb)")
    p.add_argument("--from-wandb", metavar="ENTITY/PROJECT", help="rebuild from a W&B project's runs instead")
    p.add_argument("--group", help="with --from-wandb: the ablation's W&B group")
    p.add_argument("--no-figures", action="store_true", help="tables only (figures/ is left as it is)")
    p.add_argument("--out", help="write runs.csv, the tables and figures/ here (default: RESULTS_DIR; for a folder "
                                 "you may read but not write)")
    p.add_argument("--wandb", action="store_true", help="also log RESULTS_DIR's report to its W&B summary run "
                   "(project: $WANDB_PROJECT, else bench; group: the directory's name)")
    args = p.parse_args(argv)
    if args.from_wandb or args.group:
        if not (args.from_wandb and args.group):
            raise BenchError("report: --from-wandb ENTITY/PROJECT and --group NAME go together")
        out = Path(args.results_dir or Path("runs") / f"{args.group}-wandb")
        print(write_wandb_report(args.from_wandb, args.group, out, figures=not args.no_figures))
        print(f"wrote {out / 'runs.csv'} and {out / 'table.md'}")
        return 0
    if args.results_dir is None:
        p.error("the following arguments are required: results_dir")
    out = Path(args.out or args.results_dir)
    if not Path(args.results_dir).is_dir():
        raise BenchError(f"{args.results_dir}: no such results directory")
    try:
        check_writable(out)
    except BenchError as err:
        raise BenchError(f"{err}{'' if args.out else '; give --out DIR to write the tables elsewhere'}") from None
    print(write_report(Path(args.results_dir), figures=not args.no_figures, require_runs=True, out=out))
    print(f"wrote runs.csv, table.md/.csv/.tex, deltas.csv{'' if args.no_figures else ' and figures/'} in {out}")
    log_report(WandbConfig() if args.wandb else None, Path(args.results_dir))
    return 0


def cmd_models(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="run_ablation.py models",
                                description="The paper's models (or NAMEs): parameters and GFLOPs (multiply-adds).")
    p.add_argument("names", nargs="*", metavar="NAME", help="timm names (default: the paper's models)")
    p.add_argument("--image-size", type=int, help="input size in px (default: each model's own)")
    args = p.parse_args(argv)
    print(models_table(args.names, args.image_size))
    return 0


def cmd_fake_data(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="run_ablation.py fake-data", description=(
        "Write tiny data sets of random pixels in the real formats (ImageFolder JPEGs, CIFAR "
        "batches, Fashion-MNIST IDX) for smoke runs."))
    p.add_argument("dir")
    args = p.parse_args(argv)
    paths = write_fake_data(Path(args.dir))
    print(f"export IMAGENET_ROOT={paths['imagenet']} CIFAR_ROOT={paths['cifar']} FASHION_MNIST_ROOT={paths['fashion_mnist']}")
    return 0


COMMANDS = {"plan": cmd_plan, "launch": cmd_launch, "status": cmd_status, "report": cmd_report, "compare": compare_main,
            "models": cmd_models, "bench-ablation": cmd_bench_ablation,
            "fake-data": cmd_fake_data, "bench": cmd_bench, "bench-loader": cmd_bench_loader, "bench-pipeline": cmd_bench_pipeline,
            "bench-recipe": cmd_bench_recipe, "bench-threads": cmd_bench_threads, "fidelity": fidelity_main, "gpu-check": gpu_check_main}


def _looks_like_a_command(word: str) -> bool:
    """A bare word that is no file: a mistyped command rather than a recipe path."""
    return (not word.startswith("-") and not word.endswith((".yaml", ".yml")) and "/" not in word and "=" not in word
            and not Path(word).exists())


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = COMMANDS.get(argv[0]) if argv else None
    try:
        if command is None and argv and _looks_like_a_command(argv[0]):
            close = difflib.get_close_matches(argv[0], list(COMMANDS), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise BenchError(f"'{argv[0]}' is neither a command nor a recipe file ({hint}commands: "
                             f"{', '.join(COMMANDS)}; a recipe ends in .yaml)")
        return command(argv[1:]) if command else cmd_run(argv)
    except BenchError as err:
        print("error: " + " ".join(str(err).splitlines()), file=sys.stderr)   # one line, whatever the input held
        return 2
    except KeyboardInterrupt:
        # on a line of its own, not after a progress bar
        print("\ninterrupted: finished runs are kept; run the same command again to resume", file=sys.stderr)
        return 130
