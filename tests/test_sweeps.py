"""W&B sweeps: bare `key.path=value` overrides (as `wandb agent` passes a sweep's parameters),
the example sweep files, and the program called exactly as an agent calls it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from wandb_files import offline_runs

from bench.ablation.tracking import artifact_name, for_sweep
from bench.cli import _looks_like_a_command, main, parse, planned, run_parser
from bench.config import WandbConfig, parse_override, with_bare_overrides
from bench.runs import RunDir, read_yaml

from conftest import TINY_RECIPE

ROOT = Path(__file__).resolve().parent.parent
SWEEPS = sorted((ROOT / "recipes" / "sweeps").glob("*.yaml"))
FAST_RECIPE = TINY_RECIPE.replace("precision: bf16", "precision: fp32")   # bf16 is slow on CPUs


def test_a_bare_key_value_is_an_override_unless_it_is_an_options_value():
    argv = ["r.yaml", "--out", "a=b", "--only", "distill", "x.y=1", "--set", "c=d", "--seeds", "0", "z=2"]
    assert with_bare_overrides(argv, {"--out", "--set"}) == [
        "r.yaml", "--out", "a=b", "--only", "distill", "--set", "x.y=1", "--set", "c=d", "--seeds", "0", "--set", "z=2"]
    assert not _looks_like_a_command("schedule.epochs=3") and _looks_like_a_command("raport")


def test_bare_overrides_reach_the_runs_like_set(write_recipe):
    recipe = str(write_recipe())
    bare = planned(parse(run_parser(), [recipe, "--only", "label_smoothing", "label_smoothing.eps=0.05", "--seeds", "0"]))[1]
    flag = planned(parse(run_parser(), [recipe, "--only", "label_smoothing", "--set", "label_smoothing.eps=0.05"]))[1]
    assert [s.config for s in bare] == [s.config for s in flag] and bare[0].config.label_smoothing.eps == 0.05


def agent_argv(sweep: dict) -> list[str]:
    """The sweep's command after the program, expanded as `wandb agent` expands it (its own
    `create_sweep_command_args`), for the first value of each parameter."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

    variables = create_sweep_command_args({"args": {k: {"value": v["values"][0]} for k, v in sweep["parameters"].items()}})
    variables.update(env=[], interpreter=[], program=[])
    out: list[str] = []
    for word in map(str, sweep["command"]):
        out += (variables.get(word[2:-1]) or []) if word.startswith("${") and word.endswith("}") else [word]
    return out


@pytest.mark.parametrize("path", SWEEPS, ids=[p.name for p in SWEEPS])
def test_each_sweep_file_plans_one_student_with_its_parameter(path):
    sweep = yaml.safe_load(path.read_text())
    assert sweep["program"] == "run_ablation.py" and sweep["metric"] == {"name": "top1", "goal": "maximize"}
    argv = agent_argv(sweep)
    assert "--wandb" in argv
    _, specs, _ = planned(parse(run_parser(), argv))
    for_sweep(WandbConfig(), specs, Path("runs/x"))   # one student: the sweep's run
    (student,) = [s for s in specs if s.role == "student"]
    for key, spec in sweep["parameters"].items():
        parse_override(f"{key}=0")
        node = student.config
        for part in key.split("."):
            node = getattr(node, part)
        assert node == spec["values"][0], key


def test_a_sweep_command_must_train_one_student(write_recipe, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_SWEEP_ID", "sweep1")
    monkeypatch.setenv("WANDB_RUN_ID", "run1")
    assert main([str(write_recipe()), "--only", "efficient", "cosine", "--wandb"]) == 2
    assert "one command trains one student run, this one plans 2: use --only STEP" in capsys.readouterr().err


@pytest.mark.slow
def test_the_program_called_as_wandb_agent_calls_it(write_recipe, tmp_path):
    """`${env} ${interpreter} ${program} RECIPE --only distill ... key=value`, with the variables
    the agent sets: the student is the sweep's run, the values reach its config."""
    recipe = write_recipe(FAST_RECIPE)
    (tmp_path / "params.yaml").write_text("distill.temperature:\n  value: 4\n")   # as the agent writes it
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_")}
    env.update(WANDB_MODE="offline", WANDB_SWEEP_ID="sweep1", WANDB_RUN_ID="run42", WANDB_DIR=str(tmp_path),
               WANDB_SWEEP_PARAM_PATH=str(tmp_path / "params.yaml"), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, str(ROOT / "run_ablation.py"), str(recipe), "--only", "distill", "--seeds", "0",
                           "--wandb", "--no-progress", "distill.temperature=4", "data.max_train_batches=2"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "runs" / "tiny-sweep-sweep1" / "run42"   # one folder per sweep run
    student = out / "resnet18d" / "04-distill" / "seed0"
    assert read_yaml(student / RunDir.CONFIG)["distill"]["temperature"] == 4
    assert (out / "teachers" / "teacher" / "seed0" / RunDir.FINAL).is_file()
    assert (student / RunDir.WANDB_ID).read_text().strip() == "run42"
    assert "teachers/teacher/seed0 is not logged: in a sweep" in done.stderr and "no summary run" in done.stdout
    (run,) = offline_runs(tmp_path)   # the process logged the sweep's run alone
    assert (run["id"], run["sweep_id"], run["job_type"], run["group"]) == ("run42", "sweep1", "student", "tiny-sweep-sweep1")
    assert run["config"]["distill"]["temperature"] == 4 and run["config"]["distill.temperature"] == 4
    final = RunDir(student).read_final()
    assert run["summary"]["top1"] == final["top1"]   # the sweep's metric
    used = [a["name"] for a in run["artifacts"] if a["used"]]
    assert used == [artifact_name("tiny-sweep-sweep1", Path("teachers/teacher/seed0"))]
