"""Every bad-input case of docs/errors.md: one line naming what and where, exit 2, nothing written."""
from __future__ import annotations

import errno
import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from bench import runs
from bench.ablation import plan, run_ablation
from bench.cli import main
from bench.config import load_recipe
from bench.engine.data.fake import write_fashion_mnist, write_imagefolder
from bench.engine.models import build_model
from bench.runs import RunDir

from conftest import pages

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "errors.md"
IMAGES = ["--set", "data.dataset=imagefolder", "--set", "data.image_size=16", "--set", "data.workers=0",
          "--set", "data.global_batch_size=8", "--set", "model.name=resnet18d"]


def fake_teacher(recipe: Path, out: Path, weights) -> None:
    """A teacher run that looks finished, holding `weights` (a state dict or bytes) as its model.pt."""
    teacher = plan(load_recipe(recipe), only=["distill"], smoke=True)[0]
    run_dir = out / teacher.path
    runs.write_json(run_dir / RunDir.FINAL, {**teacher.record(), "top1": 50.0, "top5": 90.0})
    if isinstance(weights, bytes):
        (run_dir / RunDir.WEIGHTS).write_bytes(weights)
    else:
        torch.save(weights, run_dir / RunDir.WEIGHTS)


def teacher_state(name: str, classes: int) -> dict:
    from bench.config import ModelConfig
    return build_model(ModelConfig(name=name, small_input=True, kwargs={"channels": [8, 16, 32, 64], "stem_width": 8}),
                       classes, 1).state_dict()


WRITE_FAILURES = ("disk full during a checkpoint write", "disk full on a real file system", "a checkpoint writer that fails")


def fill_at_second_checkpoint(recipe: Path, tmp: Path, tmpfs) -> None:
    """Mount `tmp`/o as a tmpfs that fills while the epoch-1 checkpoint is written: room for the
    small files, the epoch-0 checkpoint and half of another, measured on a run of the same command."""
    measured = tmp / "measure"
    run_ablation(plan(load_recipe(recipe), only=["efficient"], smoke=True), measured, progress=False, echo=lambda _: None)
    run = measured / "resnet18d" / "01-efficient" / "seed0"
    small = sum(pages(p) for p in measured.rglob("*") if p.is_file() and (p.parent != run or p.name in RunDir.STARTED))
    checkpoint = pages(run / RunDir.CHECKPOINT)
    shutil.rmtree(measured)
    tmpfs.mount(tmp / "o", small + checkpoint + checkpoint // 2)


def setup(case: str, tmp: Path, recipe: Path, monkeypatch, tmpfs=None) -> list[str]:
    """The command line (after writing whatever files the case needs) that triggers `case`."""
    r = str(recipe)
    if case == "malformed YAML":
        recipe.write_text("name: tiny\nbase: {model: [resnet\nsteps: []\n")
        return [r]
    if case == "a key twice in one mapping":
        recipe.write_text("name: first\n" + recipe.read_text().lstrip())
        return [r]
    if case == "unknown key":
        recipe.write_text(recipe.read_text().replace("{alpha: 0.2}", "{alpah: 0.2}"))
        return [r]
    if case == "wrong type":
        return [r, "--set", "schedule.epochs=ten"]
    if case == "out-of-range value":
        return [r, "--set", "label_smoothing.eps=1.5"]
    if case == "an infinite rate":
        return [r, "--set", "optim.lr_per_256=.inf"]
    if case == "a count past its bound":
        return [r, "--set", "runtime.threads=100000"]
    if case == "unknown model":
        return [r, "--set", "model.name=resnet9000"]
    if case == "unknown data set":
        return [r, "--set", "data.dataset=imagenet22k"]
    if case == "a data key the data set does not read":
        return [r, "--set", "data.holdout=5"]
    if case == "more held-out images than training images":
        root = write_fashion_mnist(tmp / "fm", n_train=64)
        return [r, "--set", "data.dataset=fashion_mnist", "--set", f"data.root={root}", "--set", "data.holdout=64", "--only", "efficient"]
    if case == "missing data directory":
        return [r, *IMAGES, "--set", f"data.root={tmp / 'nowhere'}", "--only", "efficient"]
    if case == "empty data directory":
        (tmp / "empty").mkdir()
        return [r, *IMAGES, "--set", f"data.root={tmp / 'empty'}", "--only", "efficient"]
    if case == "class folders differ":
        write_imagefolder(tmp / "img", classes=2, train_per_class=2, val_per_class=1)
        (tmp / "img" / "val" / "n00000001").rename(tmp / "img" / "val" / "n00000009")
        return [r, *IMAGES, "--set", f"data.root={tmp / 'img'}", "--only", "efficient"]
    if case == "corrupt image":
        write_imagefolder(tmp / "img", classes=2, train_per_class=4, val_per_class=2)
        bad = sorted((tmp / "img" / "train" / "n00000000").iterdir())[0]
        bad.write_bytes(b"\xff\xd8\xff not really a JPEG")
        return [r, *IMAGES, "--set", f"data.root={tmp / 'img'}", "--only", "efficient"]
    if case == "teacher for another number of classes":
        fake_teacher(recipe, tmp / "o", teacher_state("resnet26d", 5))
        return [r, "--only", "distill"]
    if case == "teacher of another architecture":
        fake_teacher(recipe, tmp / "o", teacher_state("resnet18d", 10))
        return [r, "--only", "distill"]
    if case == "teacher file is not a checkpoint":
        fake_teacher(recipe, tmp / "o", b"these are not weights\n")
        return [r, "--only", "distill"]
    if case == "--set with a bad path":
        return [r, "--set", "optim.lr_per_256.x=1"]
    if case == "--set with a bad value":
        return [r, "--set", "schedule.milestones=[1,"]
    if case == "--set of the seed":
        return [r, "--set", "seed=7"]
    if case == "a seed no RNG takes":
        return [r, "--seeds", "-1"]
    if case == "CUDA asked for, none here":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        return [r, "--set", "runtime.device=cuda"]
    if case == "MPS asked for, none here":
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
        return [r, "--set", "runtime.device=mps"]
    if case == "a setting MPS cannot run":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
        return [r, "--set", "runtime.deterministic=true", "--only", "efficient"]
    if case == "pretrained weights on an offline node":
        import socket

        def unreachable(address, timeout=None):
            raise socket.gaierror(-2, "Name or service not known")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setattr(socket, "create_connection", unreachable)
        return [r, "--set", "model.pretrained=ra2_in1k", "--only", "efficient"]
    if case == "an unknown name in model.kwargs":
        return [r, "--set", "model.kwargs={act_layer: nope}", "--only", "efficient"]
    if case == "results directory not writable":
        (tmp / "file").write_text("")
        return [r, "--out", str(tmp / "file" / "sub")]
    if case == "disk full during a checkpoint write":
        real_save = torch.save

        def full_disk(obj, f, *a, **k):
            if isinstance(obj, dict) and "optimizer" in obj and obj["epoch"] == 1:
                f.write(b"half")
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_save(obj, f, *a, **k)
        monkeypatch.setattr(torch, "save", full_disk)
        return [r, "--only", "efficient"]
    if case == "disk full on a real file system":
        fill_at_second_checkpoint(recipe, tmp, tmpfs)
        return [r, "--only", "efficient"]
    if case == "a checkpoint writer that fails":
        real_save = torch.save

        def failing_writer(obj, f, *a, **k):
            if isinstance(obj, dict) and "optimizer" in obj and obj["epoch"] == 1:
                f.write(b"half")
                raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
            return real_save(obj, f, *a, **k)
        monkeypatch.setattr(torch, "save", failing_writer)
        return [r, "--only", "efficient"]
    if case == "unknown step in --only":
        return [r, "--only", "warp"]
    if case == "a sweep's command planning several students":
        monkeypatch.setenv("WANDB_SWEEP_ID", "sweep1")   # as `wandb agent` starts it
        monkeypatch.setenv("WANDB_RUN_ID", "run1")
        return [r, "--only", "efficient", "cosine", "--wandb"]
    raise AssertionError(case)


def documented() -> dict[str, str]:
    """case → message, from the table of docs/errors.md (`| case | trigger | message |`)."""
    rows = {}
    for line in DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[2].startswith("`error: "):
            rows[cells[0]] = cells[2].strip("`")
    return rows


def pattern(message: str) -> str:
    """The documented message as a regex: `<...>` stands for a path or a detail."""
    return "".join(".+?" if part.startswith("<") else re.escape(part) for part in re.split(r"(<[^>]*>)", message))


CASES = list(documented())


def test_the_table_lists_every_required_case():
    required = {"malformed YAML", "unknown key", "wrong type", "out-of-range value", "unknown model",
                "unknown data set", "missing data directory", "empty data directory", "class folders differ",
                "corrupt image", "teacher for another number of classes", "teacher of another architecture",
                "teacher file is not a checkpoint", "--set with a bad path", "--set with a bad value",
                "results directory not writable", "disk full during a checkpoint write", "unknown step in --only",
                "disk full on a real file system", "a checkpoint writer that fails"}
    assert required <= set(CASES)


@pytest.mark.parametrize("case", CASES)
def test_bad_input_gives_the_documented_line_and_writes_nothing(case, tmp_path, monkeypatch, capsys, write_recipe, request):
    recipe = write_recipe()
    tmpfs = request.getfixturevalue("tmpfs") if case == "disk full on a real file system" else None
    argv = setup(case, tmp_path, recipe, monkeypatch, tmpfs)
    out = tmp_path / "o"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    ckpt = out / "resnet18d" / "01-efficient" / "seed0" / RunDir.CHECKPOINT
    code = main([*argv, "--smoke", "--no-progress"] + ([] if "--out" in argv else ["--out", str(out)]))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and re.fullmatch(pattern(documented()[case]), err[0]), err
    if case in WRITE_FAILURES:   # the epoch-0 checkpoint stays, whole
        assert runs.load_torch(ckpt)["epoch"] == 0 and not list(out.rglob("*.tmp"))
        if tmpfs is not None:   # space freed: the same command resumes from it and finishes
            tmpfs.resize(out, 64 << 20)
            assert main([*argv, "--smoke", "--no-progress", "--out", str(out)]) == 0
            assert "resuming" in capsys.readouterr().out
            assert [r["epoch"] for r in RunDir(ckpt.parent).read_metrics()] == [0, 1] and (ckpt.parent / RunDir.FINAL).exists()
        return
    after = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if ".locks" not in p.parts)
    assert set(after) - set(before) <= {Path("o")}   # at most the results folder (and its .locks/)
    assert not out.exists() or not [p for p in out.iterdir() if p.name != ".locks"] or (out / "teachers").exists()


def test_a_folder_with_two_recipes_runs_is_one_line_and_nothing_is_written(tmp_path, capsys):
    source = Path(__file__).resolve().parent.parent / "results" / "fashion_mnist_table6" / "resnet18d"
    for name, recipe in (("01-efficient", "one"), ("02-cosine", "two")):
        run = tmp_path / "out" / "resnet18d" / name / "seed0"
        run.mkdir(parents=True)
        for f in (RunDir.FINAL, RunDir.CONFIG):
            (run / f).write_bytes((source / name / "seed0" / f).read_bytes())
        final = json.loads((run / RunDir.FINAL).read_text())
        (run / RunDir.FINAL).write_text(json.dumps({**final, "recipe": recipe}))
    assert main(["report", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "'one'" in err and "'two'" in err
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["resnet18d"]   # no table written
