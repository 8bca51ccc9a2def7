"""A NaN stops a run within runtime.nan_check_steps steps; a run killed or asked to stop in the
middle of an epoch resumes from its mid-epoch checkpoint to the same weights and metrics rows."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_reliability import UNTIMED, nan_at

import bench.engine as engine
import bench.engine.step as step_mod
from bench import runs
from bench.ablation import plan
from bench.ablation.launch import RunJob, requeue_signal
from bench.config import RunConfig, load_recipe, parse_override
from bench.engine.data import build_data
from bench.engine.data.fake import write_imagefolder
from bench.engine.guard import NonFiniteLoss
from bench.engine.interrupt import Preempted, StopRequest
from bench.errors import BenchError
from bench.runs import RunDir

ROOT = Path(__file__).resolve().parent.parent


def with_runtime(cfg: RunConfig, **runtime) -> RunConfig:
    return cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update=runtime)})


def count_steps(monkeypatch) -> list[int]:
    """The number of training steps taken, as a one-element list, counted by the loss calls."""
    real, taken = step_mod.training_loss, [0]

    def loss(*args, **kwargs):
        taken[0] += 1
        return real(*args, **kwargs)
    monkeypatch.setattr(step_mod, "training_loss", loss)
    return taken


@pytest.mark.parametrize("bad_step", [0, 2, 3, 5, 6, 7, 11])
def test_a_nan_stops_the_run_within_nan_check_steps_steps(tiny_cfg, tmp_path, monkeypatch, bad_step):
    """7 batches an epoch, a check every 3: after batches 3 and 6 and at the epoch's end (batch 7),
    so a NaN at step k is caught at the first check at or after it, never in the next epoch."""
    cfg = with_runtime(tiny_cfg.model_copy(update={"data": tiny_cfg.data.model_copy(update={"max_train_batches": 7})}),
                       nan_check_steps=3)
    nan_at(monkeypatch, call=bad_step + 1)
    taken = count_steps(monkeypatch)
    with pytest.raises(NonFiniteLoss, match=rf"loss became nan at step {bad_step} ") as err:
        engine.train(cfg, tmp_path, progress=False)
    epoch, batch = divmod(bad_step, 7)
    checked = min([b for b in (3, 6) if b > batch] + [7])   # batches done at the check that catches it
    assert taken[0] == epoch * 7 + checked and taken[0] - bad_step <= 3
    assert err.value.epoch == epoch
    assert [r["epoch"] for r in RunDir(tmp_path).read_metrics()] == list(range(epoch))


@pytest.mark.slow
def test_sigkill_in_the_middle_of_an_epoch_resumes_from_its_mid_epoch_checkpoint(tmp_path):
    """Checkpoints after every batch (a check every step, a tiny interval in minutes): killed
    during a batch, halfway through an epoch-end checkpoint (its metrics row already written),
    and during the next epoch; the run ends with the weights and rows of one never interrupted,
    and of one that only checkpoints at epoch ends."""
    every_batch = json.dumps({"nan_check_steps": 1, "checkpoint_every_min": 1e-9})
    kills = [["batch", 5], ["ckpt", 2], ["batch", 3], [None, 0]]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    lines = {}
    for run, attempts, runtime in (("cut", kills, every_batch), ("full", [[None, 0]], every_batch),
                                   ("epoch_ends", [[None, 0]], "{}")):
        proc = subprocess.run([sys.executable, str(ROOT / "tests" / "kill_driver.py"), str(tmp_path / run),
                               json.dumps(attempts), runtime], capture_output=True, text=True, timeout=400, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines[run] = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    batch, ckpt, batch_again, _ = lines["cut"]
    assert [a["signal"] for a in lines["cut"]] == [signal.SIGKILL] * 3 + [None]
    assert (batch["checkpoint_epoch"], batch["checkpoint_batch"]) == (0, 1)          # epoch 1 after 1 of 3 batches
    assert (ckpt["checkpoint_epoch"], ckpt["checkpoint_batch"]) == (0, 2) and ckpt["tmp_files"]
    assert (batch_again["checkpoint_epoch"], batch_again["checkpoint_batch"]) == (1, 1)
    results = {run: UNTIMED(runs.read_json(tmp_path / run / "result.json")) for run in lines}
    assert results["cut"] == results["full"]
    assert results["epoch_ends"] == results["full"]   # only execution keys differ: the same run
    weights = {run: (tmp_path / run / RunDir.WEIGHTS).read_bytes() for run in lines}
    assert weights["cut"] == weights["full"] == weights["epoch_ends"]
    rows = {run: [UNTIMED(r) for r in RunDir(tmp_path / run).read_metrics()] for run in lines}
    assert rows["cut"] == rows["full"] == rows["epoch_ends"] and [r["epoch"] for r in rows["cut"]] == [0, 1, 2, 3]


def signal_at(monkeypatch, call: int, signum: signal.Signals) -> None:
    """Send `signum` to this process during the `call`-th training loss."""
    real, calls = step_mod.training_loss, [0]

    def loss(*args, **kwargs):
        calls[0] += 1
        if calls[0] == call:
            os.kill(os.getpid(), signum)
        return real(*args, **kwargs)
    monkeypatch.setattr(step_mod, "training_loss", loss)


def test_a_stop_signal_checkpoints_at_the_next_check_and_the_run_resumes_exactly(tiny_cfg, tmp_path, monkeypatch):
    cfg = with_runtime(RunConfig.model_validate({**tiny_cfg.model_dump(), "mixup": {"alpha": 0.2}}), nan_check_steps=2)
    engine.train(cfg, tmp_path / "full", progress=False)
    signal_at(monkeypatch, call=4, signum=signal.SIGUSR1)   # epoch 1, batch 1: the check after batch 2 acts
    stop = StopRequest()
    with stop.installed([signal.SIGUSR1]), pytest.raises(Preempted, match="stopped on SIGUSR1 in epoch 1 after 2 of 3"):
        engine.train(cfg, tmp_path / "cut", progress=False, stop=stop)
    assert signal.getsignal(signal.SIGUSR1) is signal.SIG_DFL   # the handler is put back
    state = runs.load_torch(tmp_path / "cut" / RunDir.CHECKPOINT)
    assert state["epoch"] == 0 and state["partial"]["batch"] == 2
    assert [r["epoch"] for r in RunDir(tmp_path / "cut").read_metrics()] == [0]
    monkeypatch.undo()
    engine.train(cfg, tmp_path / "cut", progress=False)
    a, b = (torch.load(tmp_path / run / RunDir.WEIGHTS, weights_only=True) for run in ("cut", "full"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = [[UNTIMED(r) for r in RunDir(tmp_path / run).read_metrics()] for run in ("cut", "full")]
    assert rows[0] == rows[1]


def test_a_stop_at_an_epoch_end_saves_before_evaluating_and_resumes_there(tiny_cfg, tmp_path, monkeypatch):
    cfg = with_runtime(tiny_cfg, nan_check_steps=50)   # no check within an epoch: the epoch's end acts
    engine.train(cfg, tmp_path / "full", progress=False)
    signal_at(monkeypatch, call=5, signum=signal.SIGUSR1)
    stop = StopRequest()
    with stop.installed([signal.SIGUSR1]), pytest.raises(Preempted, match="in epoch 1 after 3 of 3 batches"):
        engine.train(cfg, tmp_path / "cut", progress=False, stop=stop)
    assert runs.load_torch(tmp_path / "cut" / RunDir.CHECKPOINT)["partial"]["batch"] == 3
    monkeypatch.undo()
    engine.train(cfg, tmp_path / "cut", progress=False)
    assert (tmp_path / "cut" / RunDir.WEIGHTS).read_bytes() == (tmp_path / "full" / RunDir.WEIGHTS).read_bytes()
    assert [UNTIMED(r) for r in RunDir(tmp_path / "cut").read_metrics()] == \
        [UNTIMED(r) for r in RunDir(tmp_path / "full").read_metrics()]


def test_a_slurm_job_on_its_requeue_signal_checkpoints_then_hands_over_to_submitit(write_recipe, tmp_path, monkeypatch):
    """Without a cluster: the job's handler only sets the flag; after the mid-epoch checkpoint
    the job calls the handler that was there before (submitit's, which requeues) and re-raises."""
    spec = plan(load_recipe(write_recipe()), only=["efficient"], overrides=(parse_override("runtime.nan_check_steps=1"),))[0]
    called = []
    previous = signal.signal(signal.SIGUSR2, lambda signum, frame: called.append(signum))
    try:
        signal_at(monkeypatch, call=2, signum=signal.SIGUSR2)
        with pytest.raises(Preempted, match="stopped on SIGUSR2 in epoch 0 after 2 of 3 batches"):
            RunJob(tmp_path / "out", spec, None)()
        assert called == [signal.SIGUSR2]
        assert runs.load_torch(tmp_path / "out" / spec.path / RunDir.CHECKPOINT)["partial"]["batch"] == 2
    finally:
        signal.signal(signal.SIGUSR2, previous)
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "USR1")
    assert requeue_signal() == signal.SIGUSR1
    monkeypatch.setenv("SUBMITIT_PREEMPT_SIGNAL", "NOPE")
    with pytest.raises(BenchError, match="SUBMITIT_PREEMPT_SIGNAL = 'NOPE'"):
        requeue_signal()


def test_resuming_at_batch_b_yields_the_batches_of_an_uninterrupted_epoch(tiny_cfg, tmp_path):
    digits = build_data(tiny_cfg.data.model_copy(update={"max_train_batches": None}), seed=3).train
    whole = list(digits.epoch(2))
    for start in (0, 1, 5, len(whole)):
        rest = list(digits.epoch(2, start))
        assert len(rest) == len(whole) - start
        assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(rest, whole[start:]))
    root = write_imagefolder(tmp_path / "fake", classes=2, train_per_class=8, val_per_class=2)
    folder = build_data(RunConfig.model_validate({"data": {"dataset": "imagefolder", "root": str(root), "image_size": 32,
                                                           "global_batch_size": 4, "workers": 0}}).data, seed=1).train
    whole = list(folder.epoch(1))
    rest = list(folder.epoch(1, 2))
    assert len(rest) == len(whole) - 2 and all(torch.equal(a[0], b[0]) for a, b in zip(rest, whole[2:]))


def test_the_check_and_checkpoint_cadence_are_not_a_runs_identity_and_reject_bad_values(tiny_cfg):
    assert with_runtime(tiny_cfg, nan_check_steps=1, checkpoint_every_min=0.5).config_hash() == tiny_cfg.config_hash()
    for bad in ({"nan_check_steps": 0}, {"checkpoint_every_min": -1}):
        with pytest.raises(ValueError):
            RunConfig.model_validate({"runtime": bad})


@pytest.mark.skipif(sys.platform != "linux", reason="signals as on the cluster's nodes")
def test_stop_request_keeps_the_first_signal(tmp_path):
    stop = StopRequest()
    with stop.installed([signal.SIGUSR1, signal.SIGUSR2]):
        os.kill(os.getpid(), signal.SIGUSR2)
        os.kill(os.getpid(), signal.SIGUSR1)
        subprocess.run(["true"])   # let the interpreter run the handlers
    assert stop.signum == signal.SIGUSR2


def test_a_run_keeps_its_identity_when_its_data_set_moves(tmp_path):
    """A requeued job may find its data set elsewhere (a node-local copy, another mount):
    `data.root` says where the files lie, not which run it is, finished or partial."""
    for dataset in ("fashion_mnist", "imagefolder"):
        here, there = (RunConfig.model_validate({"data": {"dataset": dataset, "root": root}}) for root in ("/data/a", "/scratch/b"))
        finished, partial = RunDir(tmp_path / dataset / "finished"), RunDir(tmp_path / dataset / "partial")
        for run in (finished, partial):
            run.path.mkdir(parents=True)
        (finished / RunDir.FINAL).write_text(json.dumps({"config_hash": here.config_hash()}))
        partial.write_config(here)
        (partial / RunDir.CHECKPOINT).write_bytes(b"")
        assert (finished.state(there).name, partial.check(there).name) == ("finished", "partial")
        other = there.model_copy(update={"data": there.data.model_copy(update={"global_batch_size": 64})})
        with pytest.raises(BenchError, match=r"holds a run of another experiment \(here → expected: data.global_batch_size: 128 → 64\)"):
            partial.check(other)
