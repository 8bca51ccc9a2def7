"""Apple's MPS: `runtime.device: auto` takes CUDA, then MPS, then the CPU; on MPS only the settings
it can honour are accepted. No Mac here: torch's availability checks are replaced by mocks."""
from __future__ import annotations

import pytest
import torch

import bench.engine.training as setup_mod
from bench.cli import main
from bench.config import RunConfig
from bench.engine import distributed as dist
from bench.engine.runtime import check_mps, resolve_deterministic
from bench.errors import BenchError

MPS = torch.device("mps")


@pytest.fixture
def machine(monkeypatch):
    """Set which accelerators torch reports: machine(cuda=..., mps=...)."""
    def have(cuda: bool = False, mps: bool = False) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)
    return have


@pytest.mark.parametrize("cuda, mps, picked", [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu"), (True, False, "cuda")])
def test_auto_takes_cuda_then_mps_then_the_cpu(machine, cuda, mps, picked):
    machine(cuda=cuda, mps=mps)
    assert dist.local_device("auto").type == picked
    assert dist.local_device("cpu").type == "cpu"


def test_mps_asked_for_without_one_is_one_line(machine):
    machine(cuda=True, mps=False)
    with pytest.raises(BenchError) as err:
        dist.local_device("mps")
    assert "runtime.device = mps: no MPS device here" in str(err.value) and "\n" not in str(err.value)
    machine(mps=True)
    assert dist.local_device("mps") == MPS


def test_determinism_auto_is_off_on_mps():
    assert resolve_deterministic("auto", MPS) is False
    assert resolve_deterministic("auto", torch.device("cpu")) is True


def _cfg(tiny_cfg: RunConfig, **runtime) -> RunConfig:
    return RunConfig.model_validate({**tiny_cfg.model_dump(), "runtime": {"deterministic": "auto", **runtime}})


@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16"])
@pytest.mark.parametrize("deterministic", ["auto", False])
def test_mps_accepts_what_it_runs(tiny_cfg, precision, deterministic):
    cfg = _cfg(tiny_cfg, deterministic=deterministic)
    check_mps(cfg.model_copy(update={"efficient": cfg.efficient.model_copy(update={"precision": precision})}), world_size=1)


@pytest.mark.parametrize("change, world_size, fragment", [
    ({"efficient": {"precision": "fp64"}}, 1, "efficient.precision = fp64: MPS has no float64"),
    ({"runtime": {"deterministic": True}}, 1, "runtime.deterministic = true: PyTorch's MPS kernels include some without"),
    ({}, 2, "MPS trains in one process (no process group runs on it), not 2"),
])
def test_mps_refuses_what_it_cannot_run_in_one_line(tiny_cfg, monkeypatch, machine, change, world_size, fragment):
    """Through the run's own start-up: the device resolved from auto, then the check, before any data or model."""
    machine(mps=True)
    raw = {**tiny_cfg.model_dump(), "runtime": {"deterministic": "auto", "device": "auto"}}
    for section, values in change.items():
        raw[section] = {**raw[section], **values}
    monkeypatch.setattr(setup_mod.dist, "init", lambda device: dist.DistEnv(rank=0, world_size=world_size))
    monkeypatch.setattr(setup_mod, "build_data", lambda *a, **k: pytest.fail("data built before the check"))
    with pytest.raises(BenchError) as err:
        setup_mod.setup(RunConfig.model_validate(raw))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_the_command_line_stops_with_one_line_on_mps(write_recipe, tmp_path, capsys, machine):
    machine(mps=True)
    out = tmp_path / "out"
    assert main([str(write_recipe()), "--out", str(out), "--only", "efficient", "--no-progress",
                 "--set", "runtime.deterministic=true"]) == 2
    err = capsys.readouterr().err
    assert "runtime.deterministic = true" in err and err.count("\n") == 1
