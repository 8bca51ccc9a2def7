"""The ablation table as text: Markdown, CSV and LaTeX, each with a note on what it shows."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.config.datasets import DATASETS
from bench.report.effects import effects_markdown, trick_effects
from bench.report.frames import RUNS_CSV, Results
from bench.report.stats import ablation_table, staircase_deltas
from bench.runs import write_text
from bench.runs.rundir import CONFIG_PREFIX


def _mean_std(mean: float, std: float, n: int) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if n > 1 and not pd.isna(std) else f"{mean:.2f}"


def _signed(x: float) -> str:
    return "" if pd.isna(x) else f"{x:+.2f}"


def _delta(d: float, n_pairs: float, n: int, lo: float, hi: float, detected) -> str:
    """Our Δ: '+0.56', with its interval '[lo, hi]' (and * when it is detected after Holm's
    correction) over ≥ 2 paired seeds, and '(n=k)' when it is over fewer seeds than the step has."""
    if pd.isna(n_pairs):
        return ""
    if n_pairs == 0:
        return "– (no common seed)"
    text = _signed(d) + (f" [{_signed(lo)}, {_signed(hi)}]{'*' if _yes(detected) else ''}" if not pd.isna(lo) else "")
    return text + (f" (n={int(n_pairs)})" if n_pairs != n else "")


def _yes(flag) -> bool:
    """A `detected` cell that says yes (NaN, where there is no test, says no)."""
    return isinstance(flag, (bool, np.bool_)) and bool(flag)


def _p(p: float) -> str:
    return "" if pd.isna(p) else f"{p:.2g}"


def findings(table: pd.DataFrame, confidence: float = 0.95) -> list[str]:
    """Per model, what the paired tests support after Holm's correction over the table's steps:
    "detected" with the Δ and its interval's half-width, "not detected (±x)" otherwise (not "no
    effect": an effect within ±x may be there). Steps with one paired seed have no interval."""
    lines = []
    for m in dict.fromkeys(table.columns.get_level_values(0)):
        t = table[m]
        shown, missed, single = [], [], []
        for step, d, lo, hi, pairs, hit in zip(t.index, t["delta_top1"], t["ci_low"], t["ci_high"], t["n_pairs"],
                                                t["detected"]):
            if pd.isna(d) or pd.isna(pairs) or pairs == 0:
                continue
            if pd.isna(lo):
                single.append(str(step))
            elif _yes(hit):
                shown.append(f"{step} {d:+.2f} (±{(hi - lo) / 2:.2f})")
            else:
                missed.append(f"{step} (±{(hi - lo) / 2:.2f})")
        parts = ([f"detected: {', '.join(shown)}"] if shown else []) + \
                ([f"not detected: {', '.join(missed)}"] if missed else []) + \
                ([f"one seed, no interval: {', '.join(single)}"] if single else [])
        if parts:
            lines.append(f"{m}, Δ top-1, Holm-adjusted at {1 - confidence:.2g} over the table's steps: " + "; ".join(parts) + ".")
    return lines


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    """`ablation_table` as display strings: per model n, top-1, Δ top-1 over the seeds the step
    and its parent share (with its paired interval when there are several; * when detected after Holm's correction)
    and, with a paper table, the paper's own Δ between the same two steps beside it, then top-5
    and the published values. Ours − published is shown only for runs on the paper's data set."""
    models = list(dict.fromkeys(table.columns.get_level_values(0)))
    with_paper = any(table[(m, "paper_top1")].notna().any() for m in models)
    same_data = any(table[(m, "vs_paper_top1")].notna().any() for m in models)
    out = {}
    for m in models:
        t = table[m]
        n = t["n"].fillna(0).astype(int)
        out[(m, "n")] = n.astype(str)
        out[(m, "top-1 (%)")] = [_mean_std(a, s, k) for a, s, k in zip(t["top1"], t["top1_std"], n)]
        out[(m, "Δ top-1")] = [_delta(*row) for row in zip(t["delta_top1"], t["n_pairs"], n, t["ci_low"],
                                                            t["ci_high"], t["detected"])]
        if t["p"].notna().any():
            out[(m, "p (Holm)")] = [f"{_p(a)} ({_p(b)})" if not pd.isna(a) else "" for a, b in zip(t["p"], t["p_holm"])]
        if t["test_se"].notna().any():
            out[(m, "test-set s.e.")] = ["" if pd.isna(x) else f"±{x:.2f}" for x in t["test_se"]]
        if with_paper:
            out[(m, "paper Δ top-1")] = [_signed(d) for d in t["paper_delta_top1"]]
        out[(m, "top-5 (%)")] = [_mean_std(a, s, k) for a, s, k in zip(t["top5"], t["top5_std"], n)]
        if with_paper:
            for k in ("top1", "top5"):
                out[(m, f"paper {k[:3]}-{k[3]}")] = ["–" if pd.isna(p) else f"{p:.2f}" for p in t[f"paper_{k}"]]
        if same_data:
            out[(m, "ours − paper top-1")] = [_signed(d) for d in t["vs_paper_top1"]]
    return pd.DataFrame(out, index=table.index)


def _paper_note(table: pd.DataFrame) -> str:
    models = list(dict.fromkeys(table.columns.get_level_values(0)))
    sources = []
    for m in models:
        t = table[m].dropna(subset=["paper_top1"])
        if not t.empty:
            table_name = str(t["paper_table"].iloc[0]).replace("table", "Table ")
            sources.append(f"{t['paper_label'].iloc[0]} in {table_name}" + (f" for {m}" if len(models) > 1 else ""))
    if not sources:
        return ""
    note = (f"; paper: He et al. 2019 on ImageNet ({', '.join(sources)}), its published value and its own Δ"
            " between the same two steps")
    if not any(table[(m, "vs_paper_top1")].notna().any() for m in models):
        note += " (these runs are on another data set: no difference to the paper's values is taken)"
    return note


def evaluated_on(runs: pd.DataFrame) -> str:
    """What the students were evaluated on, for the caption: their data set's split (the registry's
    words), or N held-out training images with `data.holdout`; "the validation split" when mixed."""
    s = runs[runs["role"] == "student"]
    column = lambda key: s.get(f"{CONFIG_PREFIX}data.{key}", pd.Series([None] * len(s), index=s.index, dtype=object))
    pairs = set(zip(column("dataset"), column("holdout").fillna(0)))
    if len(pairs) != 1 or next(iter(pairs))[0] not in DATASETS:
        return "the validation split"
    ((dataset, holdout),) = pairs
    return f"{int(holdout):,} held-out training images" if holdout else DATASETS[dataset].val_split


def _note(table: pd.DataFrame, confidence: float, split: str) -> str:
    n = table.xs("n", axis=1, level=1)
    seeds, varied = int(n.max().max()), n.nunique(dropna=True).max() > 1 or n.max().nunique() > 1
    if seeds <= 1:
        note = f"Top-1/top-5 (%) on {split}, one seed; "
    elif varied:
        note = f"Top-1/top-5 (%) on {split}, mean ± std over each row's n seeds; "
    else:
        note = f"Top-1/top-5 (%) on {split}, mean ± std over {seeds} seeds; "
    note += "Δ top-1 is against the step each row builds on, over the seeds both have (paired by seed"
    note += "; (n=k) where that is fewer than the row's n)" if varied else ")"
    if seeds > 1:
        tests = int(table.xs("p", axis=1, level=1).notna().sum().sum())
        note += (f", with its {confidence:.0%} t-interval over ≥ 2 pairs; p (Holm): its two-sided p and, in brackets,"
                 f" after Holm's correction over the family of this table's {tests} tests (* where that is below"
                 f" {1 - confidence:.2g}: detected)")
    if table.xs("test_se", axis=1, level=1).notna().any().any():
        note += "; test-set s.e.: the Δ's noise from the evaluation images alone (the runs' per-image files)"
    return note + _paper_note(table) + "."


def table_markdown(table: pd.DataFrame, confidence: float = 0.95, split: str = "the validation split") -> str:
    """The ablation table as Markdown, one column group per model, and a note on what it shows."""
    if table.empty:
        return "_no finished runs_\n"
    shown = format_table(table)
    models = len(dict.fromkeys(shown.columns.get_level_values(0)))
    header = ["step"] + [f"{m} {c}" if models > 1 else c for m, c in shown.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join([str(step), *row]) + " |" for step, row in zip(shown.index, shown.to_numpy())]
    if models == 1:
        lines.insert(0, f"**{shown.columns[0][0]}**\n")
    found = findings(table, confidence)
    return "\n".join(lines) + "\n\n" + _note(table, confidence, split) + "\n" + \
        ("\n" + "\n\n".join(found) + "\n" if found else "")


_LATEX = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "±": r"$\pm$",
          "Δ": r"$\Delta$", "–": "--", "−": "-", "*": r"$^*$", "≥": r"$\geq$"}


def _tex(text: Any) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def table_latex(table: pd.DataFrame, confidence: float = 0.95, split: str = "the validation split") -> str:
    """The ablation table as a LaTeX tabular (booktabs), one multicolumn group per model."""
    if table.empty:
        return "% no finished runs\n"
    shown = format_table(table)
    shown = shown.map(_tex)
    shown.columns = pd.MultiIndex.from_tuples([(_tex(m), _tex(c)) for m, c in shown.columns])
    shown.index = [_tex(s) for s in shown.index]
    return shown.to_latex(multicolumn=True, multicolumn_format="c") + f"% {_tex(_note(table, confidence, split))}\n"


def write_tables(results: Results, out_dir: Path, confidence: float = 0.95) -> str:
    """runs.csv (unless it is where the runs came from), table.csv, table.md, table.tex and
    deltas.csv in `out_dir`; returns the Markdown."""
    out_dir = Path(out_dir)
    if not results.from_runs_csv:
        write_text(out_dir / RUNS_CSV, results.runs.to_csv(index=False))
    table = ablation_table(results.runs, confidence=confidence, correct=results.correct)
    flat = table.copy()
    flat.columns = [f"{m}/{v}" for m, v in flat.columns]
    write_text(out_dir / "table.csv", flat.to_csv())
    write_text(out_dir / "deltas.csv", staircase_deltas(results.runs, results.correct, confidence).to_csv(index=False))
    split = evaluated_on(results.runs)
    markdown = table_markdown(table, confidence, split)
    write_text(out_dir / "table.md", markdown)
    write_text(out_dir / "table.tex", table_latex(table, confidence, split))
    effects = trick_effects(results.runs, results.correct, confidence)
    if not effects.empty:   # runs that record their tricks (bench.ablation.designs)
        write_text(out_dir / "effects.csv", effects.to_csv(index=False))
        write_text(out_dir / "effects.md", effects_markdown(effects, confidence))
    return markdown
