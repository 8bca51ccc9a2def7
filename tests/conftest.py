"""Shared fixtures: a tiny, fast run config and recipe text; size-limited tmpfs mounts."""
from __future__ import annotations

import os
import subprocess
import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Optional

import pytest
import torch
import yaml

from bench.config import RunConfig

torch.set_num_threads(2)

TINY_BASE = {
    "model": {"name": "resnet18d", "small_input": True, "kwargs": {"channels": [8, 16, 32, 64], "stem_width": 8}},
    "data": {"dataset": "digits", "global_batch_size": 64, "max_train_batches": 3, "max_val_batches": 1},
    "optim": {"lr_per_256": 0.4},
    "schedule": {"kind": "step", "epochs": 3, "warmup_epochs": 1, "milestones": [2]},
    "efficient": {"zero_gamma": True, "no_bias_decay": True, "precision": "fp32"},
}



def merged(base: dict, changes: dict) -> dict:
    """`base` with `changes` merged in, key by key (a None value removes the key)."""
    out = dict(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merged(out[key], value)
        else:
            out[key] = value
    return out


def tiny_recipe(name: str = "tiny", base: Optional[dict] = None, steps: Sequence[dict] = ({"name": "efficient"},),
                teachers: Sequence[dict] = (), seeds: Sequence[int] = (0,)) -> str:
    """The YAML of a recipe of tiny runs: TINY_BASE with `base` merged in (`merged`)."""
    recipe = {"name": name, "seeds": list(seeds), "base": merged(TINY_BASE, base or {}),
              "teachers": list(teachers), "steps": list(steps)}
    return yaml.safe_dump({k: v for k, v in recipe.items() if v != []}, sort_keys=False)


TINY_RECIPE = """
name: tiny
seeds: [0]
base:
  model: {name: resnet18d, small_input: true, kwargs: {channels: [8, 16, 32, 64], stem_width: 8}}
  data: {dataset: digits, global_batch_size: 64, max_train_batches: 3, max_val_batches: 1}
  optim: {lr_per_256: 0.4}
  schedule: {kind: step, epochs: 2, warmup_epochs: 1, milestones: [1]}
  efficient: {zero_gamma: true, no_bias_decay: true, precision: bf16}
teachers:
  - name: teacher
    set: {model: {kwargs: {channels: [8, 16, 32, 64], stem_width: 8}, name: resnet26d}, schedule: {kind: cosine}}
steps:
  - name: efficient
  - name: cosine
    set: {schedule: {kind: cosine}}
  - name: label_smoothing
    set: {label_smoothing: {eps: 0.1}}
  - name: distill
    set: {distill: {teacher: teacher, temperature: 20}}
  - name: mixup
    parent: label_smoothing
    set: {mixup: {alpha: 0.2}}
"""


@pytest.fixture
def tiny_cfg() -> RunConfig:
    return RunConfig.model_validate(TINY_BASE)


@pytest.fixture
def write_recipe(tmp_path: Path):
    """Write recipe text (dedented) to a file and return its path."""
    def write(text: str = TINY_RECIPE, name: str = "recipe.yaml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        return path
    return write


PAGE = 4096   # tmpfs counts whole pages per file


def pages(path: Path) -> int:
    """The bytes a file takes on a tmpfs."""
    return -(-path.stat().st_size // PAGE) * PAGE


class Tmpfs:
    """Size-limited tmpfs mounts (root only), unmounted when the test ends."""

    def __init__(self) -> None:
        self.mounted: list[Path] = []

    def _mount(self, options: str, path: Path) -> None:
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True)
        if proc.returncode != 0:
            unavailable(f"mount -t tmpfs failed: {proc.stderr.strip() or proc.returncode}")

    def mount(self, path: Path, size_b: int) -> Path:
        if os.geteuid() != 0:
            unavailable("mounting a tmpfs needs root")
        path.mkdir(parents=True, exist_ok=True)
        self._mount(f"size={-(-size_b // PAGE) * PAGE // 1024}k", path)
        self.mounted.append(path)
        return path

    def resize(self, path: Path, size_b: int) -> None:
        self._mount(f"remount,size={-(-size_b // PAGE) * PAGE // 1024}k", path)

    def unmount_all(self) -> None:
        for path in reversed(self.mounted):
            if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(path)], capture_output=True)   # busy: detach it
        self.mounted.clear()


def unavailable(reason: str) -> None:
    """Skip a test that needs a tmpfs, saying why; under CI (CI=true, as root) fail instead."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI runs as root and must run this test)")
    warnings.warn(f"skipped: {reason}", stacklevel=2)
    pytest.skip(reason)


@pytest.fixture
def tmpfs():
    mounts = Tmpfs()
    try:
        yield mounts
    finally:
        mounts.unmount_all()
