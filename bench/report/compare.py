"""Two results folders side by side (two budgets, recipes or data sets): per step, each folder's
top-1 and Δ, and how they differ, with a Welch t-interval over each folder's seeds. Seeds are never
paired across folders: seed 0 here and seed 0 there share a number, not an initialisation or a data
order that the two runs both saw."""
from __future__ import annotations

import argparse
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.report.contrasts import effects, holm, welch
from bench.report.frames import load_results
from bench.report.stats import seed_noise

COLUMNS = ["model", "step", "parent_step", "n_a", "n_b", "top1_a", "top1_b", "top1_diff", "top1_low", "top1_high",
           "top1_p", "delta_a", "delta_b", "delta_diff", "delta_low", "delta_high", "delta_p"]


def seed_values(runs: pd.DataFrame) -> dict[tuple[str, str], dict[str, object]]:
    """Per (model, student step): its parent, its seeds' top-1, and its Δ per seed against the
    parent (the contrast engine's, over the seeds both have)."""
    students = runs[runs["role"] == "student"].sort_values("step_index", kind="stable")
    deltas = effects(runs, designs=("staircase",))
    per_seed = {(m, e): d for m, e, d in zip(deltas.get("model", []), deltas.get("effect", []), deltas.get("per_seed", []))}
    out = {}
    for (model, step), group in students.groupby(["model", "step"], sort=False):
        parent = group["parent_step"].iloc[0]
        out[(model, step)] = {"parent": parent if isinstance(parent, str) else None,
                              "top1": group["top1"].to_numpy(float),
                              "delta": np.asarray(per_seed.get((model, step), []), float)}
    return out


def compare_runs(a: pd.DataFrame, b: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """One row per step both folders ran, for the models both have (or, where each folder has one
    model of another name, those two): n seeds, mean top-1 and mean Δ in each, and b − a of each
    with its Welch interval and p-value."""
    va, vb = seed_values(a), seed_values(b)
    models_a, models_b = (list(dict.fromkeys(m for m, _ in v)) for v in (va, vb))
    pairs = [(m, m) for m in models_a if m in models_b]
    if not pairs and len(models_a) == 1 and len(models_b) == 1:
        pairs = [(models_a[0], models_b[0])]
    rows = []
    for ma, mb in pairs:
        for (model, step), x in va.items():
            y = vb.get((mb, step))
            if model != ma or y is None:
                continue
            top1 = welch(x["top1"], y["top1"], confidence)
            delta = welch(x["delta"], y["delta"], confidence) if x["parent"] else (math.nan,) * 4
            rows.append({"model": ma if ma == mb else f"{ma} / {mb}", "step": step, "parent_step": x["parent"],
                         "n_a": len(x["top1"]), "n_b": len(y["top1"]), "top1_a": x["top1"].mean(),
                         "top1_b": y["top1"].mean(), **dict(zip(COLUMNS[7:11], top1)),
                         "delta_a": x["delta"].mean() if len(x["delta"]) else math.nan,
                         "delta_b": y["delta"].mean() if len(y["delta"]) else math.nan,
                         **dict(zip(COLUMNS[13:], delta))})
    table = pd.DataFrame(rows, columns=COLUMNS)
    adjusted = holm(pd.concat([table["top1_p"], table["delta_p"]], ignore_index=True))   # one family: every test shown
    table["top1_p_holm"], table["delta_p_holm"] = adjusted[:len(table)].to_numpy(), adjusted[len(table):].to_numpy()
    return table


def _signed(x: float) -> str:
    return "" if pd.isna(x) else f"{x:+.2f}"


def _interval(diff: float, low: float, high: float, p: float, p_holm: float, alpha: float) -> str:
    if pd.isna(diff):
        return ""
    if pd.isna(low):
        return f"{_signed(diff)} (no interval: < 2 seeds)"
    star = "*" if p_holm < alpha else ""
    return f"{_signed(diff)} [{_signed(low)}, {_signed(high)}]{star} p = {p:.2g} (Holm {p_holm:.2g})"


def compare_markdown(table: pd.DataFrame, a: str, b: str, confidence: float = 0.95) -> str:
    """The comparison as Markdown, and a note on how it was computed."""
    if table.empty:
        return f"_no step that both {a} and {b} ran_\n"
    alpha = 1 - confidence
    lines = ["| model | step | n (A, B) | top-1 A | top-1 B | B − A | Δ A | Δ B | Δ B − Δ A |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in table.to_dict("records"):
        lines.append(f"| {r['model']} | {r['step']} | {r['n_a']}, {r['n_b']} | {r['top1_a']:.2f} | {r['top1_b']:.2f} | "
                     f"{_interval(r['top1_diff'], r['top1_low'], r['top1_high'], r['top1_p'], r['top1_p_holm'], alpha)} | "
                     f"{_signed(r['delta_a'])} | {_signed(r['delta_b'])} | "
                     f"{_interval(r['delta_diff'], r['delta_low'], r['delta_high'], r['delta_p'], r['delta_p_holm'], alpha)} |")
    note = (f"A: {a}; B: {b}. Top-1 (%) means over each folder's seeds; Δ is a step's change against the step it "
            f"builds on, paired by seed within a folder. B − A and Δ B − Δ A: Welch's {confidence:.0%} t-interval "
            "and two-sided p over the two folders' seeds (never paired across folders), and that p after Holm's "
            f"correction over the family of the {int(table[['top1_p', 'delta_p']].notna().sum().sum())} tests of this "
            f"table (* where it is below {alpha:.2g}: detected).")
    return "\n".join(lines) + "\n\n" + note + "\n"


def folder_runs(folder: str, flag: str = "") -> pd.DataFrame:
    """The finished runs of a results folder, or a one-line error naming it."""
    if not Path(folder).is_dir():
        raise BenchError(f"{flag}{folder}: no such results folder")
    runs = load_results(Path(folder)).runs
    if runs.empty:
        raise BenchError(f"{flag}{folder}: no finished run (no final.json below it, no runs.csv)")
    return runs


def measured_noise(delta: float, folder: str | None) -> tuple[float, int]:
    """`plan --detect DELTA --noise FOLDER`: the seed noise of a step's Δ that FOLDER measured."""
    if not delta > 0:
        raise BenchError(f"--detect {delta:g}: must be > 0 (points of top-1)")
    if folder is None:
        raise BenchError(f"--detect {delta:g}: no seed noise to go on; give --noise RESULTS_DIR, a results "
                         "folder or pilot with 2 or more seeds of a step and of the step it builds on")
    noise = seed_noise(folder_runs(folder, "--noise "))
    if noise[1] == 0:
        raise BenchError(f"--noise {folder}: no step has 2 seeds paired with the step it builds on, so it "
                         "measures no seed noise")
    return noise


def compare_main(argv: Sequence[str]) -> int:
    p = argparse.ArgumentParser(prog="run_ablation.py compare", description=(
        "Two results folders (budgets, recipes, data sets) step by step: each one's top-1 and Δ, and B − A "
        "with Welch's t-interval over each folder's seeds (never paired across folders). Nothing is written."))
    p.add_argument("a", metavar="A", help="results folder")
    p.add_argument("b", metavar="B", help="results folder")
    p.add_argument("--confidence", type=float, default=0.95, help="of the intervals (default: %(default)s)")
    p.add_argument("--format", choices=["md", "csv"], default="md", help="Markdown (default) or CSV")
    args = p.parse_args(argv)
    if not 0 < args.confidence < 1:
        raise BenchError(f"--confidence {args.confidence:g}: must be between 0 and 1")
    table = compare_runs(folder_runs(args.a), folder_runs(args.b), confidence=args.confidence)
    print(table.to_csv(index=False) if args.format == "csv" else compare_markdown(table, args.a, args.b, args.confidence),
          end="")
    return 0
