"""The ablation table as text: Markdown, CSV and LaTeX, each with a note on what it shows."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bench.report.frames import Results
from bench.report.stats import ablation_table, paired_deltas
from bench.runs import write_text


def _mean_std(mean: float, std: float, n: int) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.2f} ± {std:.2f}" if n > 1 and not pd.isna(std) else f"{mean:.2f}"


def _signed(x: float) -> str:
    return "" if pd.isna(x) else f"{x:+.2f}"


def format_table(table: pd.DataFrame) -> pd.DataFrame:
    """`ablation_table` as display strings: per model n, top-1, Δ top-1 (with its paired interval
    when there are several seeds; * when it excludes 0), top-5 and, with a paper table, the
    published value and our difference to it."""
    models = list(dict.fromkeys(table.columns.get_level_values(0)))
    with_paper = any(table[(m, "paper_top1")].notna().any() for m in models)
    out = {}
    for m in models:
        t = table[m]
        n = t["n"].fillna(0).astype(int)
        out[(m, "n")] = n.astype(str)
        out[(m, "top-1 (%)")] = [_mean_std(a, s, k) for a, s, k in zip(t["top1"], t["top1_std"], n)]
        out[(m, "Δ top-1")] = [_signed(d) + (f" [{_signed(lo)}, {_signed(hi)}]{'*' if ex else ''}" if not pd.isna(lo) else "")
                               for d, lo, hi, ex in zip(t["delta_top1"], t["ci_low"], t["ci_high"], t["excludes_zero"])]
        out[(m, "top-5 (%)")] = [_mean_std(a, s, k) for a, s, k in zip(t["top5"], t["top5_std"], n)]
        if with_paper:
            for k in ("top1", "top5"):
                out[(m, f"paper {k[:3]}-{k[3]}")] = [
                    "–" if pd.isna(p) else f"{p:.2f} ({_signed(d)})" for p, d in zip(t[f"paper_{k}"], t[f"vs_paper_{k}"])]
    return pd.DataFrame(out, index=table.index)


def _note(table: pd.DataFrame, confidence: float) -> str:
    seeds = int(table.xs("n", axis=1, level=1).max().max())
    note = (f"Top-1/top-5 (%) on the validation split, mean ± std over {seeds} seeds; " if seeds > 1
            else "Top-1/top-5 (%) on the validation split, one seed; ")
    note += "Δ top-1 is against the step each row builds on"
    if seeds > 1:
        note += (f", with its {confidence:.0%} t-interval paired by seed (* where it excludes 0: larger than"
                 " seed noise)")
    if any(table[(m, "paper_top1")].notna().any() for m in dict.fromkeys(table.columns.get_level_values(0))):
        note += "; paper: the published value (our value − published)"
    return note + "."


def table_markdown(table: pd.DataFrame, confidence: float = 0.95) -> str:
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
    return "\n".join(lines) + "\n\n" + _note(table, confidence) + "\n"


_LATEX = {"\\": r"\textbackslash{}", "_": r"\_", "%": r"\%", "&": r"\&", "#": r"\#", "±": r"$\pm$",
          "Δ": r"$\Delta$", "–": "--", "−": "-", "*": r"$^*$"}


def _tex(text: Any) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def table_latex(table: pd.DataFrame, confidence: float = 0.95) -> str:
    """The ablation table as a LaTeX tabular (booktabs), one multicolumn group per model."""
    if table.empty:
        return "% no finished runs\n"
    shown = format_table(table)
    shown = shown.map(_tex)
    shown.columns = pd.MultiIndex.from_tuples([(_tex(m), _tex(c)) for m, c in shown.columns])
    shown.index = [_tex(s) for s in shown.index]
    return shown.to_latex(multicolumn=True, multicolumn_format="c") + f"% {_tex(_note(table, confidence))}\n"


def write_tables(results: Results, out_dir: Path, confidence: float = 0.95) -> str:
    """runs.csv, table.csv, table.md, table.tex and deltas.csv in `out_dir`; returns the Markdown."""
    out_dir = Path(out_dir)
    write_text(out_dir / "runs.csv", results.runs.to_csv(index=False))
    table = ablation_table(results.runs, confidence=confidence)
    flat = table.copy()
    flat.columns = [f"{m}/{v}" for m, v in flat.columns]
    write_text(out_dir / "table.csv", flat.to_csv())
    write_text(out_dir / "deltas.csv", paired_deltas(results.runs, confidence).to_csv(index=False))
    markdown = table_markdown(table, confidence)
    write_text(out_dir / "table.md", markdown)
    write_text(out_dir / "table.tex", table_latex(table, confidence))
    return markdown
