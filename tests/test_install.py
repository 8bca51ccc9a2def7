"""The pinned install (constraints.txt against requirements*.txt) and the environment record."""
from __future__ import annotations

import importlib.util
import subprocess
from pathlib import Path

import torch
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

import bench.runs.environment as environment

ROOT = Path(__file__).resolve().parent.parent


def lock_script():
    spec = importlib.util.spec_from_file_location("constraints", ROOT / ".ci" / "constraints.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def direct_requirements() -> list[Requirement]:
    lines = [line.split(" #")[0].strip() for name in ("requirements.txt", "requirements-dev.txt")
             for line in (ROOT / name).read_text().splitlines()]
    return [Requirement(line) for line in lines if line and not line.startswith(("#", "-"))]


def test_constraints_pin_every_requirement_at_a_version_it_allows():
    lock = lock_script().read_lock(ROOT / "constraints.txt")
    assert lock["torch"] == "2.14.1" and lock["torchvision"] == "0.29.1" and "pillow" in lock
    for req in direct_requirements():
        name = canonicalize_name(req.name)
        assert name in lock, f"{req}: not in constraints.txt"
        assert req.specifier.contains(lock[name], prereleases=True), f"{req}: constraints.txt has {lock[name]}"
    assert "bag-of-tricks-bench" not in lock   # the project itself is not pinned


def test_the_readme_installs_with_the_constraints():
    readme = (ROOT / "README.md").read_text()
    assert "pip install -r requirements.txt -c constraints.txt && python run_ablation.py" in readme
    assert "pip install -r requirements-dev.txt -c constraints.txt && python -m pytest -q" in readme
    assert "-r requirements-dev.txt -c constraints.txt" in (ROOT / ".ci" / "run").read_text()


def test_the_environment_record_lists_every_package_and_uncommitted_changes(monkeypatch):
    env = environment.env_info(torch.device("cpu"))
    assert env["packages"]["torch"] == torch.__version__.split("+")[0] and env["packages"]["wandb"]
    assert list(env["packages"]) == sorted(env["packages"], key=str.lower)
    in_checkout = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=ROOT, capture_output=True).returncode == 0
    assert env["git_dirty"] in ((True, False) if in_checkout else (None,))

    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")

    monkeypatch.setattr(environment.subprocess, "run", no_git)
    assert environment.git_dirty() is None and environment.git_commit() is None
