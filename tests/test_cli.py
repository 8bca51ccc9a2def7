"""The command line as a newcomer meets it: where runs go, status of any results directory,
mistyped commands, messages about sections, resuming."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import bench.cli as cli
from bench.ablation import plan, run_ablation
from bench.cli import main
from bench.config import load_recipe
from bench.runs import RunDir, RunLock, write_json

ROOT = Path(__file__).resolve().parent.parent


def test_runs_go_to_an_ignored_folder_by_default(write_recipe, tmp_path, monkeypatch):
    recipe = write_recipe()
    monkeypatch.chdir(tmp_path)
    args = cli.run_parser().parse_args([str(recipe)])
    assert cli.planned(args)[2].as_posix() == "runs/tiny"
    assert cli.planned(cli.run_parser().parse_args([str(recipe), "--smoke"]))[2].as_posix() == "runs/tiny-smoke"
    # git ignores runs/ at the top, never the package's bench/runs/ (a new module there would not land)
    ignored = subprocess.run(["git", "check-ignore", "runs/tiny/x", "bench/runs/new.py"], cwd=ROOT, capture_output=True, text=True)
    assert ignored.stdout.split() == ["runs/tiny/x"]


def test_status_of_a_local_results_directory_without_a_manifest(write_recipe, tmp_path, capsys):
    specs = plan(load_recipe(write_recipe()), only=["efficient", "cosine", "label_smoothing"])
    out = tmp_path / "out"
    run_ablation(specs[:1], out, progress=False)
    # cosine: interrupted after one epoch; label_smoothing: another process holds it
    cosine, smoothing = RunDir(out / specs[1].path), RunDir(out / specs[2].path)
    cosine.path.mkdir(parents=True)
    cosine.write_config(specs[1].config)
    cosine.append_metrics({"epoch": 0, "train_loss": 1.0})
    smoothing.path.mkdir(parents=True)
    smoothing.write_config(specs[2].config)
    with RunLock(out, specs[2].path) as lock:
        assert lock.try_acquire()   # held by this process: status opens its own descriptor, which fails
        assert main(["status", str(out)]) == 0
    text = capsys.readouterr().out
    lines = {line.split()[0]: line for line in text.splitlines()[1:-1]}
    assert "finished" in lines[str(specs[0].path)] and "top-1" in lines[str(specs[0].path)]
    assert "interrupted" in lines[str(specs[1].path)] and "1 of 2 epochs done" in lines[str(specs[1].path)]
    assert "running" in lines[str(specs[2].path)] and "epoch 1 of 2, lock held by pid" in lines[str(specs[2].path)]
    assert text.splitlines()[-1] == "1 finished, 1 interrupted, 1 running (3 runs)"

    write_json(smoothing / RunDir.FAILED, {"error": "loss became nan at step 3"})
    assert main(["status", str(out)]) == 1   # a failed run
    assert "loss became nan at step 3" in capsys.readouterr().out


def test_run_writes_the_manifest_so_status_lists_runs_not_started(write_recipe, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setattr(cli, "run_ablation", lambda specs, out, **kw: None)   # plan and record, train nothing
    monkeypatch.setattr(cli, "write_report", lambda out: "")
    assert main([str(write_recipe()), "--out", str(out), "--only", "efficient"]) == 0
    assert main(["status", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "1 not started (1 run)"


@pytest.mark.parametrize("argv, fragment", [
    (["reprot", "results/default"], "'reprot' is neither a command nor a recipe file (did you mean 'report'?"),
    (["--set", "schedule=5", "--only", "efficient"],
     "schedule = 5: expected a mapping of its keys (kind, epochs, warmup_epochs, milestones, gamma)"),
    (["--set", "mixup=3"], "mixup = 3: expected a mapping of its keys (alpha, off_epochs)"),
])
def test_mistakes_get_one_line_that_says_what_to_do(argv, fragment, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "x")] if argv[0].startswith("-") else argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and fragment in err
    assert not (tmp_path / "x").exists()


def test_interrupt_message_starts_on_its_own_line(capsys, monkeypatch):
    def interrupted(argv):
        raise KeyboardInterrupt
    monkeypatch.setattr(cli, "cmd_run", interrupted)
    assert main([]) == 130
    assert capsys.readouterr().err.startswith("\ninterrupted: finished runs are kept")


def test_a_resumed_run_says_from_which_epoch(tiny_cfg, tmp_path, capsys):
    from bench.engine import train
    cfg = tiny_cfg.model_copy(update={"runtime": tiny_cfg.runtime.model_copy(update={"device": "cpu"})})
    train(cfg, tmp_path, progress=False)
    (tmp_path / RunDir.FINAL).unlink(missing_ok=True)
    capsys.readouterr()
    train(cfg, tmp_path, progress=False)   # the last checkpoint is of the last epoch
    assert f"resumed from the checkpoint of epoch {cfg.schedule.epochs} of {cfg.schedule.epochs}" in capsys.readouterr().out
