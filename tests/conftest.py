"""Shared fixtures: a tiny, fast run config and recipe text."""
from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
import torch

from bench.config import RunConfig

torch.set_num_threads(2)

TINY_BASE = {
    "model": {"name": "resnet18d", "small_input": True, "kwargs": {"channels": [8, 16, 32, 64], "stem_width": 8}},
    "data": {"dataset": "digits", "global_batch_size": 64, "max_train_batches": 3, "max_val_batches": 1},
    "optim": {"lr_per_256": 0.4},
    "schedule": {"kind": "step", "epochs": 3, "warmup_epochs": 1, "milestones": [2]},
    "efficient": {"zero_gamma": True, "no_bias_decay": True, "precision": "fp32"},
}

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
