"""A run is its experiment, not its execution: the identity rule (bench.strict, RunConfig.config_hash),
what a run directory holds for a planned run (RunDir.state), and the one migration of recorded runs."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pydantic import BaseModel

from bench.config import RunConfig
from bench.config.schema import SCHEMA
from bench.errors import BenchError
from bench.runs import RunDir, load_torch, read_yaml
from bench.runs.migrate import migrate
from bench.strict import Strict, experiment, is_execution

ROOT = Path(__file__).resolve().parent.parent


def sections(cfg: BaseModel):
    """(section class, key) of every key of a config, nested sections walked."""
    for key in type(cfg).model_fields:
        value = getattr(cfg, key)
        if isinstance(value, BaseModel):
            yield from sections(value)
        yield type(cfg), key


EXECUTION = {"data.root": "/elsewhere", "data.download": True, "data.workers": 3, "data.pin_memory": False,
             "runtime.device": "cpu", "runtime.channels_last": False, "runtime.compile": True, "runtime.threads": 1,
             "runtime.nan_check_steps": 7, "runtime.checkpoint_every_min": 0.0}


def test_the_execution_keys_are_those_marked_and_none_is_part_of_the_identity(tiny_cfg):
    marked = {f"{section.__name__}.{key}" for section, key in sections(tiny_cfg) if is_execution(section, key)}
    assert marked == {f"{'DataConfig' if k.startswith('data.') else 'RuntimeConfig'}.{k.split('.')[1]}" for k in EXECUTION}
    changed = {section: {k.split(".")[1]: v for k, v in EXECUTION.items() if k.startswith(section + ".")} for section in ("data", "runtime")}
    other = RunConfig.model_validate({**tiny_cfg.model_dump(), **{s: {**tiny_cfg.model_dump()[s], **v} for s, v in changed.items()}})
    assert other != tiny_cfg and other.config_hash() == tiny_cfg.config_hash() and other.experiment() == tiny_cfg.experiment()


@pytest.mark.parametrize("key, value", [("seed", 1), ("data.val_fraction", 0.3), ("runtime.deterministic", "auto"),
                                        ("runtime.sync_bn", True), ("efficient.precision", "bf16"), ("data.max_val_batches", 2),
                                        ("label_smoothing", {}), ("distill", {"teacher": "t"}), ("model.kwargs", {"drop_rate": 0.1})])
def test_every_experiment_key_is_part_of_the_identity(tiny_cfg, key, value):
    tree = tiny_cfg.model_dump()
    *parents, last = key.split(".")
    node = tree
    for part in parents:
        node = node[part]
    node[last] = value
    other = RunConfig.model_validate(tree)
    assert other.config_hash() != tiny_cfg.config_hash()
    assert other.differences(tiny_cfg) and all(line.startswith(key) for line in other.differences(tiny_cfg))


def test_the_canonical_form_holds_only_what_differs_from_the_defaults():
    assert RunConfig().experiment() == {"schema": SCHEMA}
    cfg = RunConfig.model_validate({"schedule": {"kind": "cosine"}, "mixup": {}, "runtime": {"threads": 1}})
    assert cfg.experiment() == {"schema": SCHEMA, "schedule": {"kind": "cosine"}, "mixup": {}}
    assert cfg.differences(RunConfig()) == ['mixup: off → {"alpha": 0.2, "off_epochs": 0}', 'schedule.kind: "step" → "cosine"']


def test_a_data_key_that_the_data_set_does_not_read_is_refused_and_never_recorded():
    with pytest.raises(ValueError, match=r"color_jitter=0.2, lighting_std=0.0: not read for fashion_mnist, whose pipeline reads "
                                         r"download, hflip, holdout, pad_px \(bench/config/datasets.py\)"):
        RunConfig.model_validate({"data": {"dataset": "fashion_mnist", "color_jitter": 0.2, "lighting_std": 0.0}})
    at_default = RunConfig.model_validate({"data": {"dataset": "fashion_mnist", "color_jitter": 0.4, "workers": 8}})
    assert set(at_default.record()["data"]) == {"dataset", "root", "download", "global_batch_size", "eval_batch_size",
                                                "max_train_batches", "max_val_batches", "holdout", "pad_px", "hflip"}
    assert RunConfig.model_validate(at_default.record()) == RunConfig.model_validate({"data": {"dataset": "fashion_mnist"}})
    folder = RunConfig.model_validate({"data": {"dataset": "imagenet", "color_jitter": 0.2}})
    assert folder.record()["data"]["color_jitter"] == 0.2 and "val_fraction" not in folder.record()["data"]


def test_a_key_added_with_a_default_that_keeps_the_old_behaviour_changes_no_identity():
    class Before(Strict):
        lr: float = 0.1

    class After(Before):
        warmup: int = 0

    assert experiment(After(lr=0.2)) == experiment(Before(lr=0.2)) == {"lr": 0.2}
    assert experiment(After(lr=0.2, warmup=5)) == {"lr": 0.2, "warmup": 5}


def test_the_migration_rewrites_the_old_hashes_once_and_nothing_else(tmp_path, tiny_cfg):
    out = tmp_path / "out"
    teacher, student = RunDir(out / "teachers" / "t" / "seed0"), RunDir(out / "m" / "01-distill" / "seed0")
    distilled = tiny_cfg.model_copy(update={"distill": RunConfig.model_validate({"distill": {"teacher": "t"}}).distill})
    for rd, cfg, old, teacher_hash in ((teacher, tiny_cfg, "aaaaaaaaaaaa", None), (student, distilled, "bbbbbbbbbbbb", "aaaaaaaaaaaa")):
        rd.path.mkdir(parents=True)
        rd.write_config(cfg, teacher_hash)
        (rd / RunDir.FINAL).write_text(json.dumps({"config_hash": old, "teacher_hash": teacher_hash, "top1": 50.0}, indent=2) + "\n")
    (out / "launch.json").write_text(json.dumps({"runs": [{"path": str(student.path.relative_to(out)), "config_hash": "bbbbbbbbbbbb",
                                                           "teacher_hash": "aaaaaaaaaaaa"}]}))
    (out / "runs.csv").write_text("config_hash,teacher_hash,top1\naaaaaaaaaaaa,,50.0\nbbbbbbbbbbbb,aaaaaaaaaaaa,50.0\n")
    before = student.state(distilled, tiny_cfg.config_hash())
    assert before.name == "conflict" and before.why.endswith("recorded under an earlier schema: python -m bench.runs.migrate RESULTS_DIR")
    changed, unmapped = migrate(out)
    assert len(changed) == 5 and unmapped == []
    new_t, new_s = tiny_cfg.config_hash(), distilled.config_hash()
    assert (out / "runs.csv").read_text() == f"config_hash,teacher_hash,top1\n{new_t},,50.0\n{new_s},{new_t},50.0\n"
    assert student.state(distilled, new_t).name == teacher.state(tiny_cfg).name == "finished"
    assert json.loads((student / RunDir.TEACHER).read_text()) == {"teacher_hash": new_t}
    assert migrate(out) == ([], [])   # once


def test_a_partial_run_killed_mid_epoch_resumes_under_other_threads_workers_and_cadence(write_recipe, tmp_path):
    """Killed in the middle of an epoch at 2 threads with a checkpoint after every batch, the run
    resumes at 1 thread, no workers and epoch-end checkpoints: the same run, finished in place."""
    recipe = write_recipe(open(ROOT / "tests" / "conftest.py").read().split('TINY_RECIPE = """')[1].split('"""')[0]
                          .replace("max_train_batches: 3", "max_train_batches: 12").replace("epochs: 2", "epochs: 3"))
    out, run = tmp_path / "out", tmp_path / "out" / "resnet18d" / "01-efficient" / "seed0"
    argv = [sys.executable, str(ROOT / "run_ablation.py"), str(recipe), "--only", "efficient", "--out", str(out), "--no-progress",
            "--set", "efficient.precision=fp32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(argv + ["--set", "runtime.threads=2", "--set", "runtime.checkpoint_every_min=1e-9",
                                     "--set", "runtime.nan_check_steps=1"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    while first.poll() is None:   # no deadline: a slow machine only takes longer to get there
        try:
            state = load_torch(run / RunDir.CHECKPOINT) if (run / RunDir.CHECKPOINT).is_file() else {}
        except Exception:   # caught between its write and its rename
            state = {}
        if state.get("epoch") == 0 and state.get("partial", {}).get("batch", 0) >= 2:
            first.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    first.wait(timeout=60)
    assert first.returncode == -signal.SIGKILL, first.stdout.read().decode()[-2000:]
    assert not (run / RunDir.FINAL).exists() and read_yaml(run / RunDir.CONFIG)["runtime"]["threads"] == 2
    second = subprocess.run(argv + ["--set", "runtime.threads=1", "--set", "data.workers=0", "--set", "runtime.checkpoint_every_min=0"],
                            env=env, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-2000:]
    assert "resnet18d/01-efficient/seed0: resuming" in second.stdout
    assert [r["epoch"] for r in RunDir(run).read_metrics()] == [0, 1, 2]
    assert read_yaml(run / RunDir.CONFIG)["runtime"]["threads"] == 1   # the config it last ran under
    assert RunDir(run).read_final()["config_hash"] == RunConfig.model_validate(read_yaml(run / RunDir.CONFIG)).config_hash()


def test_the_migration_drops_data_keys_a_data_set_never_read_and_refuses_removed_settings(tmp_path):
    out = tmp_path / "out"
    rd = RunDir(out / "m" / "01-a" / "seed0")
    rd.path.mkdir(parents=True)
    cfg = RunConfig.model_validate({"data": {"dataset": "fashion_mnist"}})
    recorded = {**cfg.model_dump(mode="json")}
    recorded["data"] = {**recorded["data"], "color_jitter": 0.2, "crop_scale": [0.5, 1.0], "decode_reduced": False}  # as schema 1 wrote it
    (rd / RunDir.CONFIG).write_text(json.dumps(recorded))
    (rd / RunDir.FINAL).write_text(json.dumps({"config_hash": "cccccccccccc", "top1": 1.0}))
    migrate(out)
    assert "color_jitter" not in read_yaml(rd / RunDir.CONFIG)["data"] and rd.state(cfg).name == "finished"
    recorded["data"]["decode_reduced"] = True
    (rd / RunDir.CONFIG).write_text(json.dumps(recorded))
    with pytest.raises(BenchError, match=r"config.yaml: data.decode_reduced=true, which schema 2 does not have"):
        migrate(out)
