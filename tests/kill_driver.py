"""Train one tiny run again and again in forked processes that are SIGKILLed at chosen points.

    python tests/kill_driver.py RUN_DIR '[["batch", 5], ["ckpt", 1], ["eval", 2], ["external", 3], ["weights", 1], [null, 0]]' [RUNTIME]

The parent imports torch once and forks one child per attempt (each a real process, killed
with SIGKILL: by itself at a hook, or by the parent for "external"). It prints one JSON line
per attempt: how the child ended, the epoch of the checkpoint it left, stray temporary files.
Points: "batch" k = during the k-th training loss of the process; "ckpt"/"weights" k = halfway
through writing the k-th checkpoint / the final weights; "eval" k = after the first batch of
the k-th evaluation; "external" k = the parent kills the child once metrics.jsonl has k rows.
RUNTIME, a JSON object, sets `runtime` keys of the run (e.g. mid-epoch checkpoints).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import torch

import bench.engine as engine
import bench.engine.loop as loop
import bench.engine.step as step_mod
from bench import runs
from bench.config import RunConfig
from bench.runs import RunDir

CONFIG = {
    "model": {"name": "resnet18d", "small_input": True,
              "kwargs": {"channels": [8, 16, 32, 64], "stem_width": 8, "drop_rate": 0.3}},
    "data": {"dataset": "digits", "global_batch_size": 64, "max_train_batches": 3, "max_val_batches": 2,
             "eval_batch_size": 128},
    "optim": {"lr_per_256": 0.4},
    "schedule": {"kind": "cosine", "epochs": 4, "warmup_epochs": 1},
    "efficient": {"zero_gamma": True, "no_bias_decay": True, "precision": "bf16"},
    "label_smoothing": {"eps": 0.1},
    "mixup": {"alpha": 0.2},
    "runtime": {"device": "cpu", "threads": 1},   # every attempt and the reference at the same thread count
}


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str, at: int) -> None:
    """Install the hook that kills this process at the `at`-th occurrence of `point`."""
    count = [0]

    def hit() -> bool:
        count[0] += 1
        return count[0] == at

    if point == "batch":
        real_loss = step_mod.training_loss
        step_mod.training_loss = lambda *a, **k: die() if hit() else real_loss(*a, **k)
    elif point == "eval":
        real_eval = loop.evaluate

        class FirstBatchThenDie:
            def __init__(self, batches):
                self.batches = batches

            def epoch(self, e):
                it = self.batches.epoch(e)
                yield next(it)
                die()

        loop.evaluate = lambda model, batches, *a, **k: real_eval(
            model, FirstBatchThenDie(batches) if hit() else batches, *a, **k)
    elif point in ("ckpt", "weights"):
        real_save = torch.save

        def save(obj, f, *a, **k):
            is_ckpt = isinstance(obj, dict) and "optimizer" in obj
            if is_ckpt == (point == "ckpt") and hit():
                f.write(b"PK\x03\x04 half a checkpoint")
                f.flush()
                os.fsync(f.fileno())
                die()
            return real_save(obj, f, *a, **k)
        torch.save = save


def child(run_dir: Path, point, at: int, runtime: dict) -> None:
    torch.set_num_threads(1)
    if point not in (None, "external"):
        arm(point, at)
    cfg = RunConfig.model_validate({**CONFIG, "runtime": {**CONFIG["runtime"], **runtime}})
    final = engine.train(cfg, run_dir, progress=False)
    runs.write_json(run_dir / "result.json", final)


def attempt(run_dir: Path, point, at: int, runtime: dict) -> dict:
    pid = os.fork()
    if pid == 0:
        try:
            child(run_dir, point, at, runtime)
        finally:
            os._exit(0)
    if point == "external":
        while len(RunDir(run_dir).read_metrics()) < at:
            if os.waitpid(pid, os.WNOHANG) != (0, 0):
                raise SystemExit("the child finished before it could be killed")
            time.sleep(0.001)
        os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    state = runs.load_torch(run_dir / RunDir.CHECKPOINT) if (run_dir / RunDir.CHECKPOINT).is_file() else {}
    return {"point": point, "at": at, "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
            "checkpoint_epoch": state.get("epoch"), "checkpoint_batch": state.get("partial", {}).get("batch"),
            "tmp_files": sorted(p.name for p in run_dir.glob(".*.tmp"))}


def main() -> None:
    run_dir, plan = Path(sys.argv[1]), json.loads(sys.argv[2])
    runtime = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    run_dir.mkdir(parents=True, exist_ok=True)
    for point, at in plan:
        print(json.dumps(attempt(run_dir, point, at, runtime)), flush=True)


if __name__ == "__main__":
    main()
