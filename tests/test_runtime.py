"""Launch invariance: ghost batch norm, the CPU thread budget, determinism, float64 runs."""
from __future__ import annotations

import copy
import json

import pytest
import torch
import torch.nn.functional as F

import bench.engine.training as setup_mod
from bench.config import ModelConfig, RunConfig, smoke_config, validate
from bench.engine import distributed as dist
from bench.engine.ghost_bn import GhostBatchNorm
from bench.engine.loop import train
from bench.engine.models import build_model
from bench.engine.runtime import auto_threads, precision_warning, resolve_deterministic, resolve_threads
from bench.errors import BenchError, ConfigError
from bench.runs.environment import cpu_info

TINY = ModelConfig(name="resnet18d", small_input=True, kwargs={"channels": [4, 8, 16, 32], "stem_width": 4})


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(TINY, 10, 1, zero_gamma=False).double().train()
    for m in model.modules():   # non-trivial γ, β and running statistics
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
            m.running_mean.uniform_(-0.1, 0.1)
    return model


def test_ghost_batch_norm_on_one_process_equals_two_ranks_of_one_slice_each():
    """Batch 32 in slices of 16 on one process = 2 ranks × 16 images with plain BatchNorm: the
    same outputs, the same (averaged) gradients, and running statistics equal to the ranks' mean."""
    x = torch.randn(32, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    labels = torch.arange(32) % 10
    whole = tiny_model()
    ranks = [copy.deepcopy(whole) for _ in range(2)]
    ghost = GhostBatchNorm(whole, 16)

    out = ghost(x)
    per_rank = [model(x[r::2]) for r, model in enumerate(ranks)]   # rank r holds images r, r + 2, ...
    torch.testing.assert_close(out[0::2], per_rank[0], rtol=0, atol=1e-12)
    torch.testing.assert_close(out[1::2], per_rank[1], rtol=0, atol=1e-12)
    assert not torch.allclose(out, tiny_model()(x))   # statistics over all 32 images differ

    F.cross_entropy(out, labels).backward()
    for r in range(2):
        F.cross_entropy(per_rank[r], labels[r::2]).backward()
    for (name, p), p0, p1 in zip(whole.named_parameters(), ranks[0].parameters(), ranks[1].parameters()):
        torch.testing.assert_close(p.grad, (p0.grad + p1.grad) / 2, rtol=1e-9, atol=1e-12, msg=name)   # DDP's mean

    state, s0, s1 = whole.state_dict(), ranks[0].state_dict(), ranks[1].state_dict()
    stats = [k for k in state if k.endswith(("running_mean", "running_var"))]
    assert len(stats) > 10
    for key in stats:
        torch.testing.assert_close(state[key], (s0[key] + s1[key]) / 2, rtol=1e-12, atol=1e-14, msg=key)
    assert all(state[k] == s0[k] for k in state if k.endswith("num_batches_tracked"))   # one step, not two


def test_ghost_batch_norm_is_plain_in_eval_and_for_one_slice():
    model = tiny_model()
    x = torch.randn(8, 1, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(GhostBatchNorm(copy.deepcopy(model), 8)(x), copy.deepcopy(model)(x))
    ghost = GhostBatchNorm(model, 4).eval()
    torch.testing.assert_close(ghost(x), model.eval()(x))
    with pytest.raises(BenchError, match="bn_batch_size = 3: does not divide this device's batch of 8"):
        GhostBatchNorm(tiny_model(), 3)(x)


def test_average_buffers_is_a_no_op_on_one_process():
    model = tiny_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dist.average_buffers(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("raw, fragment", [
    ({"efficient": {"bn_batch_size": 48}, "data": {"global_batch_size": 64}},
     "efficient.bn_batch_size=48 does not divide data.global_batch_size=64"),
    ({"efficient": {"bn_batch_size": 16}, "runtime": {"sync_bn": True}},
     "efficient.bn_batch_size=16 with runtime.sync_bn=true"),
    ({"efficient": {"bn_batch_size": 0}}, "efficient.bn_batch_size = 0: Input should be greater than 0"),
    ({"runtime": {"threads": 0}}, "runtime.threads = 0: Input should be 'auto'; or Input should be greater than 0"),
    ({"runtime": {"threads": "many"}}, "runtime.threads = 'many': Input should be 'auto'"),
    ({"runtime": {"deterministic": "sometimes"}}, "runtime.deterministic = 'sometimes': Input should be a valid boolean"),
    ({"efficient": {"precision": "fp8"}}, "efficient.precision = 'fp8'"),
])
def test_new_settings_have_one_line_errors(raw, fragment):
    with pytest.raises(ConfigError) as info:
        validate(RunConfig, raw, "r.yaml")
    assert "\n" not in str(info.value) and str(info.value).startswith("r.yaml: ") and fragment in str(info.value)


def test_a_slice_that_does_not_divide_the_per_device_batch_is_refused_at_start(tiny_cfg, monkeypatch):
    cfg = RunConfig.model_validate({**tiny_cfg.model_dump(), "efficient": {"bn_batch_size": 16},
                                    "data": {**tiny_cfg.data.model_dump(), "global_batch_size": 32}})
    monkeypatch.setattr(setup_mod.dist, "init", lambda device: dist.DistEnv(rank=0, world_size=4))
    with pytest.raises(BenchError, match=r"bn_batch_size = 16: does not divide the per-device batch of 8 "
                                         r"\(data.global_batch_size = 32 over 4 devices\)"):
        setup_mod.setup(cfg)


def test_smoke_keeps_two_slices_of_the_small_batch(tiny_cfg):
    for dataset, batch, ghost in (("imagenet", 8, 4), ("cifar10", 16, 8), ("digits", 1024, 128)):
        cfg = RunConfig.model_validate({**tiny_cfg.model_dump(), "efficient": {"bn_batch_size": 128},
                                        "data": {"dataset": dataset, "global_batch_size": 1024}})
        small = smoke_config(cfg)
        assert (small.data.global_batch_size, small.efficient.bn_batch_size) == (batch, ghost), dataset
        RunConfig.model_validate(small.model_dump())   # still a valid config


# ---- threads and determinism -------------------------------------------------------------

@pytest.mark.parametrize("cores, ranks, threads", [(2, 1, 2), (16, 8, 2), (64, 8, 8), (8, 16, 1), (1, 1, 1)])
def test_auto_threads_share_the_cores_among_ranks(cores, ranks, threads):
    """Loader workers take no thread: results/bench/cpu-epyc-pipeline-resnet50d-64px-fp32-threads-workers-grid.json."""
    assert auto_threads(cores, ranks) == threads


def test_resolve_threads_from_settings_and_environment(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    assert resolve_threads(3, {"OMP_NUM_THREADS": "1"}) == (3, "runtime.threads")   # the recipe wins
    assert resolve_threads("auto", {"OMP_NUM_THREADS": "1"}) == (1, "OMP_NUM_THREADS")
    assert resolve_threads("auto", {}) == (16, "auto: 16 cores / 1 local rank(s)")
    assert resolve_threads("auto", {"LOCAL_WORLD_SIZE": "4"})[0] == 4             # torchrun: 4 ranks share 16
    assert resolve_threads("auto", {"SLURM_CPUS_PER_TASK": "6"})[0] == 6          # SLURM: already per task
    with pytest.raises(BenchError, match="OMP_NUM_THREADS = 'x': expected a positive integer"):
        resolve_threads("auto", {"OMP_NUM_THREADS": "x"})
    with pytest.raises(BenchError, match="SLURM_CPUS_PER_TASK = '0'"):
        resolve_threads("auto", {"SLURM_CPUS_PER_TASK": "0"})


def test_deterministic_auto_is_exact_on_cpu_and_autotuned_on_cuda():
    assert resolve_deterministic("auto", torch.device("cpu")) is True
    assert resolve_deterministic("auto", torch.device("cuda", 0)) is False
    assert resolve_deterministic(True, torch.device("cuda", 0)) is True
    assert resolve_deterministic(False, torch.device("cpu")) is False


def test_a_run_records_its_threads_and_determinism_and_trains_in_float64(tiny_cfg, tmp_path):
    cfg = RunConfig.model_validate({**tiny_cfg.model_dump(), "runtime": {"device": "cpu", "threads": 1, "deterministic": "auto"},
                                    "efficient": {"precision": "fp64", "bn_batch_size": 8}})
    before = torch.get_num_threads()
    try:
        train(cfg, tmp_path, progress=False)
    finally:
        torch.set_num_threads(before)
    env = json.loads((tmp_path / "env.json").read_text())
    assert (env["threads"], env["threads_from"], env["cpu_threads"], env["deterministic"]) == (1, "runtime.threads", 1, True)
    model, flags = cpu_info()
    assert (env["cpu_model"], set(env["cpu_flags"]) <= flags) == (model, True)
    weights = torch.load(tmp_path / "model.pt", weights_only=True)
    assert {v.dtype for v in weights.values() if v.is_floating_point()} == {torch.float64}


AVX2_ONLY = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse2 fma f16c avx2 bmi2
processor\t: 1
model name\t: AMD EPYC
flags\t\t: fpu sse2 fma f16c avx2 bmi2
"""


def test_low_precision_on_a_cpu_without_its_instructions_is_flagged(tmp_path):
    (tmp_path / "cpuinfo").write_text(AVX2_ONLY)
    model, flags = cpu_info(str(tmp_path / "cpuinfo"))
    assert model == "AMD EPYC" and {"avx2", "f16c"} <= flags and "processor" not in flags
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    for precision in ("bf16", "fp16"):
        assert f"efficient.precision = {precision} on a CPU without AVX-512" in precision_warning(precision, cpu, flags)
        assert precision_warning(precision, cuda, flags) is None                  # a GPU has its own units
    assert precision_warning("fp32", cpu, flags) is None
    assert precision_warning("bf16", cpu, flags | {"avx512_bf16"}) is None          # native bf16
    assert precision_warning("bf16", cpu, flags | {"avx512bw"}) is None             # emulated by oneDNN at fp32 speed
    assert precision_warning("fp16", cpu, flags | {"avx512_bf16"}) is not None      # bf16 units do not run fp16
    assert precision_warning("bf16", cpu, {"fp", "asimd", "bf16"}) is None          # not x86: not judged
    assert cpu_info(str(tmp_path / "absent")) == ("", set())
