"""A real full disk (a size-limited tmpfs, as root): wherever the file system fills, one line
names the file, the previous checkpoint stays whole, no temporary file is left, and the same
command finishes once there is space, resuming. The fill at the second checkpoint is a row of
docs/errors.md (tests/test_bad_input.py); here it fills at the first file and at the first checkpoint."""
from __future__ import annotations

import re

import pytest

import bench.report
from bench import runs
from bench.ablation import plan, run_ablation
from bench.cli import main
from bench.config import load_recipe
from bench.runs import RunDir

from conftest import PAGE, pages

RUN = "resnet18d/01-efficient/seed0"


@pytest.mark.parametrize("where", ["first file", "first checkpoint"])
def test_a_full_tmpfs_stops_with_one_line_and_the_same_command_resumes(where, tmp_path, tmpfs, write_recipe,
                                                                      capsys, monkeypatch):
    monkeypatch.setattr(bench.report, "write_figures", lambda *a, **k: None)   # the tables suffice here
    recipe = write_recipe()
    measured = tmp_path / "measure"
    run_ablation(plan(load_recipe(recipe), only=["efficient"]), measured, progress=False, echo=lambda _: None)
    started = sum(pages(p) for p in measured.rglob("*") if p.is_file() and p.name in RunDir.STARTED)
    size = PAGE if where == "first file" else started + 2 * PAGE + pages(measured / RUN / RunDir.CHECKPOINT) // 2
    out = tmpfs.mount(tmp_path / "o", size)
    argv = [str(recipe), "--only", "efficient", "--out", str(out), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and re.fullmatch(r"error: (.+): write failed \(No space left on device\); nothing was written",
                                          err[0]), err
    if where == "first checkpoint":
        assert err[0].startswith(f"error: {out / RUN / RunDir.CHECKPOINT}:")
    assert not list(out.rglob("*.tmp")) and not (out / RUN / RunDir.CHECKPOINT).exists()
    tmpfs.resize(out, 64 << 20)
    assert main(argv) == 0
    assert [r["epoch"] for r in RunDir(out / RUN).read_metrics()] == [0, 1]
    assert runs.read_json(out / RUN / RunDir.FINAL)["epochs"] == 2 and not list(out.rglob("*.tmp"))
