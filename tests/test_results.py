"""The report: run directories → DataFrames → tables (Markdown, CSV, LaTeX), figures, notebook."""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path
from typing import Optional

import matplotlib
import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
import torch

from bench import report
from bench.ablation import plan, run_ablation
from bench.cli import main
from bench.config import load_recipe
from bench.engine import logit_gaps
from bench.errors import BenchError, ConfigError
from bench.report import figures as plots
from bench.report import frames, staircase, stats, tables
from bench.runs import RunDir

from conftest import TINY_RECIPE

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ["staircase", "curves", "fig3a_lr", "fig3b_val_top1", "fig4a_gap_theory", "fig4b_logit_gaps"]
RECIPE = TINY_RECIPE.replace("name: tiny\n", "name: tiny\npaper_table: table6\npaper_models: {resnet18d: resnet50d}\n")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    """A 2-seed smoke ablation of the tiny recipe's first three steps, reported."""
    tmp = tmp_path_factory.mktemp("report")
    (tmp / "recipe.yaml").write_text(RECIPE)
    specs = plan(load_recipe(tmp / "recipe.yaml"), seeds=[0, 1], only=["efficient", "cosine", "label_smoothing"])
    out = tmp / "out"
    run_ablation(specs, out, progress=False, echo=lambda _: None)
    report.write_report(out)
    return out


def test_runs_csv_has_one_row_per_run_with_the_report_columns(smoke):
    df = pd.read_csv(smoke / "runs.csv")
    assert len(df) == 6
    assert set(frames.RUN_COLUMNS) <= set(df.columns)
    assert {"config.schedule.kind", "config.data.global_batch_size"} <= set(df.columns)
    assert sorted(df.groupby("step")["seed"].apply(sorted).tolist()) == [[0, 1]] * 3
    assert (df["paper_table"] == "table6").all() and (df["paper_model"] == "resnet50d").all()
    assert (df["num_classes"] == 10).all() and (df["steps_per_epoch"] == 3).all()


def test_table_shows_mean_std_n_deltas_intervals_and_the_paper(smoke):
    df = frames.load_runs(smoke)
    md = (smoke / "table.md").read_text()
    lines = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| step")]
    assert [line.split(" | ")[0][2:] for line in lines] == ["efficient", "cosine", "label_smoothing"]
    cosine = df[df.step == "cosine"].sort_values("seed")
    efficient = df[df.step == "efficient"].sort_values("seed")
    mean, std = cosine.top1.mean(), cosine.top1.std()
    assert f"| cosine | 2 | {mean:.2f} ± {std:.2f} | {mean - efficient.top1.mean():+.2f} [" in md
    assert "] | +0.75 | " in md and "| 77.91 | 93.81 |" in md   # Table 6, ResNet-50-D: + cosine decay and its Δ
    assert "2 seeds" in md and "95% t-interval" in md
    table = pd.read_csv(smoke / "table.csv", index_col=0)
    assert list(table.index) == ["efficient", "cosine", "label_smoothing"]
    assert table.loc["cosine", "resnet18d/paper_top1"] == 77.91
    assert table.loc["label_smoothing", "resnet18d/n"] == 2
    tex = (smoke / "table.tex").read_text()
    assert "\\begin{tabular}" in tex and "label\\_smoothing" in tex and "$\\pm$" in tex
    deltas = pd.read_csv(smoke / "deltas.csv")
    assert list(deltas.step) == ["efficient", "cosine", "label_smoothing"] and deltas.n_pairs.tolist() == [0, 2, 2]


def test_every_figure_is_written_as_png_and_pdf_with_content(smoke):
    for stem in FIGURES:
        png, pdf = smoke / "figures" / f"{stem}.png", smoke / "figures" / f"{stem}.pdf"
        assert pdf.read_bytes().startswith(b"%PDF") and pdf.stat().st_size > 5_000, stem
        image = mpimg.imread(png)
        assert image.shape[0] > 400 and image.shape[1] > 600, stem
        assert image[..., :3].std() > 0.05, f"{stem}: blank figure"


def test_each_run_stores_its_validation_logit_gaps(smoke):
    run_dir = smoke / "resnet18d" / "03-label_smoothing" / "seed0"
    gaps = np.load(run_dir / RunDir.LOGIT_GAPS)
    val_images = len(frames.load_curves(smoke, [str(run_dir.relative_to(smoke))]))  # sanity: a curve exists
    assert val_images == 2 and gaps.ndim == 1 and len(gaps) > 100 and np.isfinite(gaps).all()


def test_logit_gap_is_max_minus_mean_of_the_others():
    logits = torch.tensor([[3.0, 1.0, -1.0], [0.0, 0.0, 6.0]])
    assert logit_gaps(logits).tolist() == pytest.approx([3.0, 6.0])


def test_theoretical_gap_matches_the_paper():
    assert plots.logit_gap_theory(0.1, 1000) == pytest.approx(math.log(999 * 0.9 / 0.1))
    assert float(plots.logit_gap_theory(0.1, 1000)) == pytest.approx(9.1, abs=0.05)   # paper, Section 5.2
    assert float(plots.logit_gap_theory(0.5, 2)) == pytest.approx(0.0)


def test_fig3a_is_computed_by_the_schedule_with_the_runs_settings(smoke):
    df = frames.load_runs(smoke)
    assert plots.schedule_steps(df) == ("efficient", "cosine")
    assert plots.smoothing_steps(df) == ("cosine", "label_smoothing")
    fig = plots.plot_lr_schedules(df)
    step, cosine = (line.get_ydata() for line in fig.axes[0].get_lines())
    peak = 0.4 * 64 / 256   # lr_per_256 × global batch / 256 of the tiny recipe
    assert max(step) == pytest.approx(peak) and max(cosine) == pytest.approx(peak)
    assert step[0] == pytest.approx(peak / 3)           # warmup over 1 epoch of 3 iterations
    assert step[-1] == pytest.approx(peak * 0.1) and cosine[-1] < peak / 2


def _synthetic(top1: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for i, (step, values) in enumerate(top1.items(), start=1):
        for seed, v in enumerate(values):
            rows.append({"model": "m", "role": "student", "step": step, "step_index": i,
                         "parent_step": list(top1)[i - 2] if i > 1 else None, "seed": seed, "top1": v,
                         "top5": 99.0, "paper_table": None, "paper_model": None, "path": f"m/{i}/seed{seed}"})
    return frames.runs_frame(rows)


def test_paired_interval_uses_t_quantiles_over_seed_differences():
    df = _synthetic({"a": [50.0, 60.0, 70.0], "b": [51.0, 62.0, 70.0], "c": [61.0, 72.0, 80.0]})
    d = stats.paired_deltas(df).set_index("step")
    diffs = np.array([1.0, 2.0, 0.0])
    half = 4.302653 * diffs.std(ddof=1) / math.sqrt(3)    # t(0.975, 2 dof)
    assert d.loc["b", "delta_top1"] == pytest.approx(1.0)
    assert (d.loc["b", "ci_low"], d.loc["b", "ci_high"]) == pytest.approx((1.0 - half, 1.0 + half), rel=1e-5)
    assert not d.loc["b", "excludes_zero"]               # seed noise swamps +1
    assert d.loc["c", "excludes_zero"] and d.loc["c", "ci_low"] == pytest.approx(10.0)  # +10 on every seed
    assert "+10.00 [+10.00, +10.00]*" in tables.table_markdown(stats.ablation_table(df))


def test_a_dataframe_from_records_gives_the_same_tables(smoke, tmp_path):
    loaded = frames.load_results(smoke)
    rebuilt = frames.Results(frames.runs_frame(loaded.runs.to_dict("records")), loaded.curves, loaded.gaps)
    assert tables.write_tables(rebuilt, tmp_path) == (smoke / "table.md").read_text()


def test_paper_tables_2_to_6_load_in_long_form():
    for table in ("table2", "table3", "table4", "table5", "table6"):
        paper = frames.load_paper(table)
        assert {"table", "step", "model", "top1", "top5"} <= set(paper.columns) and (paper["table"] == table).all()
    t6 = frames.load_paper("table6").set_index(["model", "step"])
    assert len(t6) == 18 and t6.loc[("inception_v3", "distill_mixup"), "top1"] == 78.34
    assert frames.load_paper("table4").query("batch_size == 1024 and step == 'zero_gamma'")["top1"].item() == 76.37
    with pytest.raises(BenchError, match="table9"):
        frames.load_paper("table9")


def test_report_command_rebuilds_from_run_dirs_and_rejects_a_missing_dir(smoke, tmp_path, capsys):
    before = (smoke / "table.md").read_text()
    (smoke / "table.md").unlink()
    assert main(["report", str(smoke), "--no-figures"]) == 0
    assert (smoke / "table.md").read_text() == before and "| label_smoothing |" in capsys.readouterr().out
    assert main(["report", str(tmp_path / "nothing")]) == 2
    assert "no such results directory" in capsys.readouterr().err


def test_paper_models_must_name_a_model_of_the_recipe(write_recipe):
    with pytest.raises(ConfigError, match="paper_models: 'resnet99'"):
        load_recipe(write_recipe(RECIPE.replace("resnet18d: resnet50d", "resnet99: resnet50d")))


def test_notebook_runs_as_documented_from_the_repository_root(tmp_path):
    """The command of docs/report.md, as written there but for the output folder."""
    nbformat = pytest.importorskip("nbformat")
    doc = (ROOT / "docs" / "report.md").read_text()
    command = next(line for line in doc.splitlines() if line.startswith("BENCH_RESULTS=") and "nbconvert" in line)
    command = command.replace("--output-dir /tmp/report", f"--output-dir {tmp_path}")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}   # the installed package, as a user has it
    proc = subprocess.run(command, shell=True, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    nb = nbformat.read(tmp_path / "ablation_report.ipynb", as_version=4)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    assert sum("image/png" in o.get("data", {}) for o in outputs) == len(FIGURES)
    assert any("| cosine |" in o.get("data", {}).get("text/markdown", "") for o in outputs)
    assert json.dumps(nb.cells[1].outputs).count("24 finished runs") == 1


def test_staircase_names_the_papers_model_when_a_teacher_shares_the_students_name(smoke):
    runs = frames.load_runs(smoke)
    teacher = runs.iloc[[0]].assign(role="teacher", step="teacher", step_index=0, paper_model=float("nan"),
                                    paper_table=float("nan"))
    fig = plots.plot_staircase(pd.concat([teacher, runs], ignore_index=True))
    labels = [t.get_text() for legend in fig.legends for t in legend.get_texts()]
    assert "paper: ResNet-50-D on ImageNet (right axis, same scale)" in labels


@pytest.mark.parametrize("folder", ["fashion_mnist_table6", "fashion_mnist_table6_converged", "default"])
def test_the_committed_report_regenerates_byte_for_byte(tmp_path, folder):
    """`report` on the committed run directories gives the committed tables and figures (PDFs
    carry no creation date), so a change to the report code shows in this test."""
    committed = ROOT / "results" / folder
    copy = tmp_path / "fm"
    shutil.copytree(committed, copy, ignore=shutil.ignore_patterns("*.png", "*.pdf", "*.csv", "table.*"))
    assert main(["report", str(copy)]) == 0
    for name in ("runs.csv", "table.md", "table.csv", "table.tex", "deltas.csv"):
        assert (copy / name).read_bytes() == (committed / name).read_bytes(), name
    for pdf in sorted((committed / "figures").glob("*.pdf")):
        if f"Matplotlib pdf backend v{matplotlib.__version__}".encode() in pdf.read_bytes():  # else drawn by another version
            assert (copy / "figures" / pdf.name).read_bytes() == pdf.read_bytes(), pdf.name


def _runs(top1: dict[str, dict[int, float]], parents: Optional[dict[str, str]] = None, **columns) -> pd.DataFrame:
    """Student runs: {step: {seed: top-1}}, each step on the previous one unless `parents` says."""
    rows = []
    for i, (step, by_seed) in enumerate(top1.items(), start=1):
        parent = (parents or {}).get(step, list(top1)[i - 2] if i > 1 else None)
        rows += [{"model": "m", "role": "student", "step": step, "step_index": i, "parent_step": parent, "seed": seed,
                  "top1": v, "top5": 99.0, "paper_table": None, "paper_model": None, "path": f"m/{i}/seed{seed}",
                  **columns} for seed, v in by_seed.items()]
    return frames.runs_frame(rows)


def test_delta_is_over_the_seeds_both_steps_have():
    """`--only a b --seeds 0 1` on top of a seed-0 run: c's Δ is its seed 0 minus b's seed 0,
    not its one seed minus b's two-seed mean; n is shown per step, and the Δ's n where it differs."""
    df = _runs({"a": {0: 50.0}, "b": {0: 52.0, 1: 60.0}, "c": {0: 53.0}})
    st = stats.step_stats(df).set_index("step")
    assert st.loc["c", "delta_top1"] == pytest.approx(1.0) and st.loc["c", "n_pairs"] == 1   # not 53 − 56
    assert st.loc["b", "delta_top1"] == pytest.approx(2.0) and st.loc["b", "n_pairs"] == 1   # not 56 − 50
    md = tables.table_markdown(stats.ablation_table(df))
    assert "| b | 2 | 56.00 ± 5.66 | +2.00 (n=1) |" in md and "| c | 1 | 53.00 | +1.00 |" in md
    assert "each row's n seeds" in md
    none = tables.table_markdown(stats.ablation_table(_runs({"a": {0: 50.0}, "b": {1: 52.0}})))
    assert "| b | 1 | 52.00 | – (no common seed) |" in none


def test_the_paper_column_shows_the_papers_own_delta_never_ours_minus_theirs():
    steps = {"efficient": {0: 98.0}, "cosine": {0: 97.0}, "label_smoothing": {0: 99.0}, "mixup": {0: 98.5}}
    paper = {"paper_table": "table6", "paper_model": "resnet50d"}
    digits = _runs(steps, {"mixup": "label_smoothing"}, **paper, **{"config.data.dataset": "digits"})
    st = stats.step_stats(digits).set_index("step")
    assert st.loc["cosine", "paper_delta_top1"] == pytest.approx(77.91 - 77.16)
    assert st.loc["mixup", "paper_delta_top1"] == pytest.approx(79.15 - 78.31)   # the same two steps as ours
    assert st["vs_paper_top1"].isna().all()
    md = tables.table_markdown(stats.ablation_table(digits))
    assert "| cosine | 1 | 97.00 | -1.00 | +0.75 | 99.00 | 77.91 | 93.81 |" in md
    assert "(+19" not in md and "(+2" not in md and "− paper" not in md and "another data set" in md
    imagenet = _runs(steps, **paper, **{"config.data.dataset": "imagenet"})
    assert "| ours − paper top-1 |" in tables.table_markdown(stats.ablation_table(imagenet))
    assert stats.step_stats(imagenet).set_index("step").loc["cosine", "vs_paper_top1"] == pytest.approx(97.0 - 77.91)


DEFAULT_STEPS = {"efficient": {0: 354 / 3.59}, "cosine": {0: 351 / 3.59}, "label_smoothing": {0: 355 / 3.59},
                 "distill": {0: 357 / 3.59}, "mixup": {0: 352 / 3.59, 1: 354 / 3.59}, "distill_mixup": {0: 357 / 3.59}}
DEFAULT_PARENTS = {"mixup": "label_smoothing", "distill_mixup": "mixup"}


def test_staircase_branches_siblings_from_their_parent():
    df = _runs(DEFAULT_STEPS, DEFAULT_PARENTS)
    segments = staircase.staircase_segments(stats.step_stats(df))
    assert ("m", "label_smoothing", "mixup") in segments and ("m", "label_smoothing", "distill") in segments
    assert ("m", "distill", "mixup") not in segments and ("m", "mixup", "distill_mixup") in segments
    fig = plots.plot_staircase(df)
    drawn = {tuple(np.round(line.get_xdata(), 6)) for line in fig.axes[0].get_lines() if len(line.get_xdata()) == 2}
    assert (2.0, 4.0) in drawn and (3.0, 4.0) not in drawn     # label_smoothing (x = 2) → mixup (x = 4)


def test_staircase_axis_does_not_zoom_onto_one_image_differences_and_the_legend_covers_nothing():
    df = _runs(DEFAULT_STEPS, DEFAULT_PARENTS)
    n, se = staircase.measurement_noise(df)
    p = df["top1"].mean() / 100
    assert n == 359 and se == pytest.approx(100 * math.sqrt(p * (1 - p) / 359))   # ≈ 0.6 pp
    fig = plots.plot_staircase(df)
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert high - low >= staircase.SE_PER_AXIS * se and high <= 100 + 0.2 * (high - low)   # 1.7 pp of data, ≥ 4.8 pp
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("n=1") == 5 and texts.count("n=2") == 1
    assert "one image = 0.28 pp" in ax.get_title()
    fig.draw_without_rendering()
    assert not ax.legend_ and len(fig.legends) == 1
    assert not fig.legends[0].get_window_extent().overlaps(ax.get_window_extent())


def test_validation_images_are_read_off_the_top1_values():
    assert stats.validation_images([354 / 3.59, 100.0, 351 / 3.59]) == 359
    assert stats.validation_images([86.83, 88.33, 100 * 8881 / 10000]) == 10000
    assert stats.validation_images([100 / 3]) == 3 and stats.validation_images([math.pi]) is None


def _curves(finals: dict[str, float], epochs: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs = _runs({step: {0: v} for step, v in finals.items()})
    curves = pd.concat([pd.DataFrame({"path": path, "epoch": range(epochs),
                                      "val_top1": np.linspace(20.0, v, epochs)})
                        for path, v in zip(runs["path"], runs["top1"])], ignore_index=True)
    return runs, curves


def test_curves_that_end_on_top_of_each_other_are_drawn_as_small_multiples():
    runs, curves = _curves({"a": 98.6, "b": 97.8, "c": 98.9, "d": 99.4})
    fig = plots.plot_curves(runs, curves)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["a (n=1)", "b (n=1)", "c (n=1)", "d (n=1)"]
    assert all(len(ax.get_lines()) == 4 for ax in visible)          # its own curve and the 3 others in grey
    runs, curves = _curves({"a": 60.0, "b": 75.0, "c": 90.0})
    assert len(plots.plot_curves(runs, curves).axes) == 1          # apart: one panel


def test_a_folder_with_only_runs_csv_rebuilds_its_tables_and_staircase(tmp_path):
    """A folder holding only a runs.csv (results/default's, copied alone): its tables and
    staircase come from runs.csv, which stays as it was, byte for byte."""
    committed = ROOT / "results" / "default"
    shutil.copy(committed / "runs.csv", tmp_path / "runs.csv")
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "runs.csv").read_bytes() == (committed / "runs.csv").read_bytes()
    for name in ("table.md", "table.csv", "deltas.csv"):
        assert (tmp_path / name).read_bytes() == (committed / name).read_bytes(), name
    written = sorted(p.stem for p in (tmp_path / "figures").glob("*.png"))
    assert written == ["fig3a_lr", "fig4a_gap_theory", "staircase"]     # no curves or gaps in a runs.csv
