"""Distributed training: environment parsing, and DDP over 2 gloo processes through torchrun
ending with the weights of 1 process at the same global batch and seed."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.engine import distributed as dist
from bench.errors import BenchError

ROOT = Path(__file__).resolve().parent.parent

# GroupNorm, not BatchNorm: batch statistics are per rank without SyncBN (CUDA only), and the
# claim under test is that DDP over shares of a global batch equals one process on all of it.
DDP_RECIPE = """
name: ddp
seeds: [3]
base:
  model: {name: resnet18d, small_input: true, kwargs: {channels: [8, 16, 32, 64], stem_width: 8, norm_layer: groupnorm1}}
  data: {dataset: digits, global_batch_size: 64, max_train_batches: 3, max_val_batches: 1}
  optim: {lr_per_256: 0.4}
  schedule: {kind: cosine, epochs: 2, warmup_epochs: 1}
  efficient: {zero_gamma: false, no_bias_decay: true, precision: fp32}
  runtime: {device: cpu}
  label_smoothing: {eps: 0.1}
steps:
  - name: cosine
"""


def test_read_env_from_torchrun_variables():
    env = dist.read_env({"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "1234"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr, env.master_port) == (3, 8, 1, "n1", 1234)
    assert env.source == "torchrun" and env.distributed


def test_read_env_from_slurm_variables():
    env = dist.read_env({"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "777",
                         "SLURM_JOB_NODELIST": "gpu[07-08]"})
    assert (env.rank, env.world_size, env.local_rank, env.master_addr) == (5, 8, 1, "gpu07")
    assert env.source == "slurm" and env.master_port == 20777
    single_task = dist.read_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_LOCALID": "0"})
    assert not single_task.distributed and single_task.source == "single"
    assert not dist.read_env({}).distributed


@pytest.mark.parametrize("nodelist, host", [("node1", "node1"), ("gpu[03-05,9],cpu1", "gpu03"),
                                            ("a-b[10,12]", "a-b10"), ("x1,x2", "x1")])
def test_first_host_of_a_slurm_node_list(nodelist, host):
    assert dist.first_host(nodelist) == host


def test_bad_rank_variable_is_named():
    with pytest.raises(BenchError, match="RANK = 'x'"):
        dist.read_env({"RANK": "x", "WORLD_SIZE": "2"})


def test_sync_bn_on_cpu_is_refused(monkeypatch):
    monkeypatch.setattr(dist, "_CURRENT", dist.DistEnv(rank=0, world_size=2))
    with pytest.raises(BenchError, match="sync_bn"):
        dist.wrap_model(torch.nn.BatchNorm2d(3), torch.device("cpu"), sync_bn=True)


def run_cli(cmd: list[str], out: Path) -> None:
    proc = subprocess.run(cmd + ["--out", str(out), "--no-progress"], cwd=ROOT, capture_output=True, text=True,
                          timeout=240, env={**__import__("os").environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]


def test_two_gloo_processes_through_torchrun_match_one_process(tmp_path):
    recipe = tmp_path / "ddp.yaml"
    recipe.write_text(DDP_RECIPE)
    one, two = tmp_path / "one", tmp_path / "two"
    run_cli([sys.executable, "run_ablation.py", str(recipe)], one)
    run_cli([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
             "run_ablation.py", str(recipe)], two)
    run = Path("resnet18d", "01-cosine", "seed3")
    w1, w2 = (torch.load(d / run / "model.pt", weights_only=True) for d in (one, two))
    assert w1.keys() == w2.keys()
    moved = [k for k in w1 if w1[k].is_floating_point() and not torch.equal(w1[k], torch.zeros_like(w1[k]))]
    assert moved
    for key in w1:
        torch.testing.assert_close(w2[key], w1[key], rtol=1e-4, atol=1e-5, msg=key)
    f1, f2 = (json.loads((d / run / "final.json").read_text()) for d in (one, two))
    assert f2["top1"] == pytest.approx(f1["top1"]) and f2["val_loss"] == pytest.approx(f1["val_loss"], rel=1e-4)
    m1, m2 = ([json.loads(line) for line in (d / run / "metrics.jsonl").read_text().splitlines()] for d in (one, two))
    assert [r["train_loss"] for r in m2] == pytest.approx([r["train_loss"] for r in m1], rel=1e-4)
    env1, env2 = (json.loads((d / run / "env.json").read_text()) for d in (one, two))
    assert (env1["world_size"], env2["world_size"]) == (1, 2)
    assert (two / "runs.csv").is_file() and not list(two.rglob(".*.tmp"))
