"""The report: run directories → DataFrames → tables (Markdown, CSV, LaTeX), figures, notebook."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import matplotlib
import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from bench import report
from bench.ablation import plan, run_ablation
from bench.cli import main
from bench.config import load_recipe
from bench.errors import ConfigError
from bench.report import figures as plots
from bench.report import frames, tables
from bench.runs import RunDir

from conftest import TINY_RECIPE

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ["staircase", "curves", "fig3a_lr", "fig3b_val_top1", "fig4a_gap_theory", "fig4b_logit_gaps", "cost"]
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
    # our Δ [interval], its p (Holm-adjusted), its test-set s.e., then Table 6's own Δ for + cosine decay
    assert re.search(r"\] \| [\d.e-]+ \([\d.e-]+\) \| ±\d\.\d\d \| \+0\.75 \| ", md) and "| 77.91 | 93.81 |" in md
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


def test_a_dataframe_from_records_gives_the_same_tables(smoke, tmp_path):
    loaded = frames.load_results(smoke)
    rebuilt = frames.Results(frames.runs_frame(loaded.runs.to_dict("records")), loaded.curves, loaded.gaps, loaded.correct)
    assert tables.write_tables(rebuilt, tmp_path) == (smoke / "table.md").read_text()


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


@pytest.mark.parametrize("folder", ["fashion_mnist_table6", "fashion_mnist_table6_32ep", "default",
                                    "fashion_mnist_designs", "fashion_mnist_table6_64ep"])
def test_the_committed_report_regenerates_byte_for_byte(tmp_path, folder):
    """`report` on the committed run directories gives the committed tables and figures (PDFs
    carry no creation date), so a change to the report code shows in this test."""
    committed = ROOT / "results" / folder
    copy = tmp_path / "fm"
    shutil.copytree(committed, copy, ignore=shutil.ignore_patterns("*.png", "*.pdf", "*.csv", "table.*"))
    assert main(["report", str(copy)]) == 0
    for name in ("runs.csv", "table.md", "table.csv", "table.tex", "deltas.csv", "effects.csv", "effects.md"):
        assert (copy / name).read_bytes() == (committed / name).read_bytes(), name
    for pdf in sorted((committed / "figures").glob("*.pdf")):
        if f"Matplotlib pdf backend v{matplotlib.__version__}".encode() in pdf.read_bytes():  # else drawn by another version
            assert (copy / "figures" / pdf.name).read_bytes() == pdf.read_bytes(), pdf.name


@pytest.mark.parametrize("folder", ["fashion_mnist_table6_32ep", "default"])
def test_the_committed_manifest_lists_every_run_of_its_folder(folder):
    committed = ROOT / "results" / folder
    listed = {r["path"] for r in json.loads((committed / "launch.json").read_text())["runs"]}
    finished = {str(p.parent.relative_to(committed)) for p in committed.glob("**/final.json")}
    assert listed == finished


def test_a_folder_with_only_runs_csv_rebuilds_its_tables_and_staircase(tmp_path):
    """A folder holding only a runs.csv (results/default's, copied alone): its tables and
    staircase come from runs.csv, which stays as it was, byte for byte; the tables are those of
    the run directories less what only their per-image files give (the test-set noise)."""
    from dataclasses import replace
    committed = ROOT / "results" / "default"
    shutil.copy(committed / "runs.csv", tmp_path / "runs.csv")
    assert main(["report", str(tmp_path)]) == 0
    assert (tmp_path / "runs.csv").read_bytes() == (committed / "runs.csv").read_bytes()
    expected = tmp_path / "expected"
    tables.write_tables(replace(frames.load_results(committed), correct={}), expected)
    for name in ("table.md", "table.csv", "deltas.csv"):
        assert (tmp_path / name).read_bytes() == (expected / name).read_bytes(), name
    assert "test-set s.e." in (committed / "table.md").read_text()   # the run directories give it
    written = sorted(p.stem for p in (tmp_path / "figures").glob("*.png"))
    assert written == ["cost", "fig3a_lr", "fig4a_gap_theory", "staircase"]     # no curves or gaps in a runs.csv


def _read_only_mount_works() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", "-m", "sh", "-c", "mount --bind -o ro / /mnt 2>/dev/null || true; true"],
                          capture_output=True).returncode == 0


@pytest.mark.skipif(not _read_only_mount_works(), reason="needs root and unshare for a read-only bind mount")
def test_status_and_report_on_a_folder_the_user_cannot_write(tmp_path):
    """A teammate's results, mounted read-only (root writes through file modes, not through a
    read-only mount): status reports and says in one line why it wrote no tables, report says
    where it could not write and writes them to --out when told to. Nothing in the folder changes."""
    folder, out = tmp_path / "shared", tmp_path / "mine"
    shutil.copytree(ROOT / "results" / "default", folder)
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    script = (f"mount --bind -o ro {folder} {folder} && "
              f"{sys.executable} run_ablation.py status {folder}; echo status=$?; "
              f"{sys.executable} run_ablation.py report {folder} --no-figures; echo report=$?; "
              f"{sys.executable} run_ablation.py report {folder} --no-figures --out {out}; echo out=$?")
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert "status=0" in proc.stdout and "report=2" in proc.stdout and "out=0" in proc.stdout, proc.stdout + proc.stderr
    assert "all 8 runs finished; the tables were not written:" in proc.stdout and "(Read-only file system)" in proc.stdout
    assert proc.stderr.strip().splitlines() == [f"error: results directory {folder}: not writable (Read-only file "
                                                "system); give --out DIR to write the tables elsewhere"]
    assert (out / "table.md").read_text() == (ROOT / "results" / "default" / "table.md").read_text()
    assert {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before


def test_a_finished_run_linked_into_the_folder_is_in_its_table(tmp_path, capsys):
    """A run that reached the folder as a symbolic link (a teammate's run, linked in) is a run of
    the folder: status counts it and report tables it, as if it had been copied. A link that loops
    back to the folder is walked once."""
    committed = ROOT / "results" / "default"
    folder, elsewhere = tmp_path / "mine", tmp_path / "theirs"
    shutil.copytree(committed, folder, ignore=shutil.ignore_patterns("*.png", "*.pdf", "*.csv", "table.*"))
    run = next(p.parent for p in folder.glob("*/02-*/seed0/final.json"))
    elsewhere.mkdir()
    shutil.move(run, elsewhere / "seed0")
    run.symlink_to(elsewhere / "seed0", target_is_directory=True)
    (folder / "loop").symlink_to(folder, target_is_directory=True)
    assert main(["status", str(folder)]) == 0
    assert "all 8 runs finished" in capsys.readouterr().out
    assert main(["report", str(folder), "--no-figures"]) == 0
    for name in ("runs.csv", "table.md", "deltas.csv"):
        assert (folder / name).read_bytes() == (committed / name).read_bytes(), name
