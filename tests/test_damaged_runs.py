"""Every row of docs/errors.md's "Damaged run files" table, with each file truncated, replaced by
garbage bytes and emptied: one line that names the file (and what to do), or a recovery that says
what it did; nothing finished is overwritten."""
from __future__ import annotations

import random
import re
import shutil
from pathlib import Path

import pytest
import torch

import bench.report
from bench import runs
from bench.ablation import plan, run_ablation
from bench.cli import main
from bench.config import load_recipe
from bench.report import write_report
from bench.runs import RunDir

from conftest import TINY_RECIPE

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "errors.md"
KINDS = ("truncated", "garbage", "empty")
EFFICIENT, COSINE = Path("resnet18d/01-efficient/seed0"), Path("resnet18d/02-cosine/seed0")


def documented() -> dict[tuple[str, str], str]:
    """(file, when it is read) → message, from the table under "## Damaged run files"."""
    text = DOC.read_text().split("## Damaged run files", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 4 and cells[3].startswith("`"):
            rows[(cells[0], cells[1])] = cells[3].strip("`")
    return rows


def pattern(message: str) -> str:
    """The documented message as a regex: `<...>` stands for a path or a detail."""
    return "".join(".+?" if part.startswith("<") else re.escape(part) for part in re.split(r"(<[^>]*>)", message))


def damage(path: Path, kind: str) -> bytes:
    """Cut `path` to its first half, overwrite it with as many random bytes, or empty it; returns the new bytes."""
    data = path.read_bytes()
    new = {"truncated": data[:len(data) // 2], "garbage": random.Random(len(data)).randbytes(max(len(data), 64)),
           "empty": b""}[kind]
    path.write_bytes(new)
    return new


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, Path]:
    """(recipe, results) of two finished runs, efficient and cosine, with their runs.csv."""
    base = tmp_path_factory.mktemp("trained")
    recipe = base / "recipe.yaml"
    recipe.write_text(TINY_RECIPE)
    out = base / "o"
    run_ablation(plan(load_recipe(recipe), only=["efficient", "cosine"]), out, progress=False, echo=lambda _: None)
    write_report(out, figures=False)
    return recipe, out


@pytest.fixture(autouse=True)
def no_figures(monkeypatch):
    monkeypatch.setattr(bench.report, "write_figures", lambda *a, **k: None)   # the tables suffice here


def unfinished(run: Path) -> None:
    """A run killed after its last checkpoint: no final.json (nor its outputs)."""
    for name in (RunDir.FINAL, RunDir.WEIGHTS, RunDir.LOGIT_GAPS):
        (run / name).unlink()


def fake_teacher_and_student(recipe: Path, out: Path, checkpoint: Path) -> tuple[Path, Path]:
    """A finished teacher (final.json, model.pt) and its student stopped after a checkpoint."""
    teacher, student = plan(load_recipe(recipe), only=["distill"])
    runs.write_json(out / teacher.path / RunDir.FINAL, {**teacher.record(), "top1": 50.0, "top5": 90.0})
    torch.save({"fc.weight": torch.zeros(10, 64)}, out / teacher.path / RunDir.WEIGHTS)
    rd = RunDir(out / student.path)
    rd.write_config(student.config, student.teacher_hash)
    shutil.copy(checkpoint, rd / RunDir.CHECKPOINT)
    return out / teacher.path, rd.path


def setup(case: tuple[str, str], kind: str, recipe: Path, out: Path) -> tuple[list[str], int, Path]:
    """Damage what `case` names; returns the command, its exit status, and the damaged file."""
    r, run = str(recipe), out / EFFICIENT
    again = [r, "--only", "efficient", "--out", str(out), "--no-progress"]
    report = ["report", str(out), "--no-figures"]
    file, when = case
    if file == "(none)":
        (out.parent / "empty").mkdir()
        return ["report", str(out.parent / "empty")], 2, out.parent / "empty"
    if file == "`teacher.json`":
        _, student = fake_teacher_and_student(recipe, out, run / RunDir.CHECKPOINT)
        return [r, "--only", "distill", "--out", str(out), "--no-progress"], 2, student / RunDir.TEACHER
    if when.startswith("a finished teacher"):
        teacher, _ = fake_teacher_and_student(recipe, out, run / RunDir.CHECKPOINT)
        return [r, "--only", "distill", "--out", str(out), "--no-progress"], 2, teacher / RunDir.WEIGHTS
    name = file.split("`")[1]
    if file == "`model.pt`, `last.pt`":
        damage(run / RunDir.CHECKPOINT, kind)
        return again, 0, run / RunDir.WEIGHTS
    if when.startswith("an unfinished"):
        unfinished(run)
        if name == RunDir.WEIGHTS:
            shutil.copy(out / COSINE / RunDir.WEIGHTS, run / RunDir.WEIGHTS)
        return again, 2 if name == RunDir.CONFIG else 0, run / name
    if "without a previous" in when:
        (out / "runs.csv").unlink()
    if when == "a finished run, as the same command runs again":
        return again, 2, run / name
    return report, 0, run / name


CASES = list(documented())


def test_the_table_lists_every_damaged_file():
    files = {file for file, _ in CASES}
    assert {"`final.json`", "`metrics.jsonl`", "`config.yaml`", "`last.pt`", "`teacher.json`"} <= files
    assert any("`model.pt`" in file for file in files) and "(none)" in files


PARAMS = [(case, kind) for case in CASES for kind in (KINDS if case[0] != "(none)" else ("empty",))]


@pytest.mark.parametrize(("case", "kind"), PARAMS, ids=[f"{f} {w}-{kind}" for (f, w), kind in PARAMS])
def test_a_damaged_file_is_named_or_recovered_as_documented(case, kind, trained, tmp_path, capsys):
    recipe, template = trained
    out = tmp_path / "o"
    shutil.copytree(template, out)
    argv, status, target = setup(case, kind, recipe, out)
    damaged = damage(target, kind) if target.is_file() else None
    finished = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and (p.parent / RunDir.FINAL).is_file()}
    code = main(argv)
    captured = capsys.readouterr()
    lines = (captured.err if status == 2 or "by `report`" in case[1] else captured.out).strip().splitlines()
    message = pattern(documented()[case])
    assert code == status, captured
    if status == 2:
        assert len(captured.err.strip().splitlines()) == 1, captured.err
    assert [line for line in lines if re.fullmatch(message, line.strip())], (message, lines)
    assert "Traceback" not in captured.err
    for path, data in finished.items():   # a finished run's files are never overwritten or deleted
        if path.parent != out:   # (runs.csv and the tables are rewritten from them)
            assert path.read_bytes() == data, path
    if status == 2 and damaged is not None:
        assert target.read_bytes() == damaged   # left as it is, for the user to restore
    moved = sorted(p.name for p in target.parent.glob("*.corrupt-*"))
    if case[0] in ("`last.pt`", "`metrics.jsonl`") and case[1].startswith("an unfinished"):
        assert "last.pt.corrupt-1" in moved   # set aside, not deleted
        assert [row["epoch"] for row in RunDir(target.parent).read_metrics()] == [0, 1]   # trained again, whole
        assert runs.read_json(target.parent / RunDir.FINAL)["epochs"] == 2
    if case == ("`model.pt`", "an unfinished run (killed after it, before `final.json`)"):
        assert "fc.weight" in runs.load_torch(target)   # written again, whole


def test_result_files_whose_values_have_the_wrong_type_are_named_not_a_traceback(tmp_path, capsys):
    """A final.json whose top1 is text: `report` leaves the run out and says why, `status` shows
    why instead of its top-1; a runs.csv column of text where numbers belong is one line, exit 2."""
    import csv
    import io
    import json
    folder = tmp_path / "r"
    shutil.copytree(Path(__file__).resolve().parent.parent / "results" / "default", folder,
                    ignore=shutil.ignore_patterns("*.png", "*.pdf", "runs.csv"))
    final = folder / "resnet18d" / "02-cosine" / "seed0" / RunDir.FINAL
    final.write_text(json.dumps({**json.loads(final.read_text()), "top1": "high"}))
    assert main(["report", str(folder), "--no-figures"]) == 0
    err = capsys.readouterr().err
    assert f"skipped {final}: unreadable (top1 = \"high\": not a percentage from 0 to 100)" in err
    assert main(["status", str(folder)]) == 0
    assert 'top1 = "high": not a percentage' in capsys.readouterr().out
    only = tmp_path / "only"
    only.mkdir()
    text = (folder / "runs.csv").read_text()
    first_top1 = next(csv.DictReader(io.StringIO(text)))["top1"]
    (only / "runs.csv").write_text(text.replace(f",{first_top1},", ",high,", 1))
    assert main(["report", str(only), "--no-figures"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {only / 'runs.csv'}: column top1 holds 'high', not a number") and "\n" not in err
