"""Teacher weights from the files people have: timm train.py checkpoints (plain and EMA, chosen by
model.checkpoint_key), safetensors, DDP and torch.compile prefixes; pickled objects are refused."""
from __future__ import annotations

import argparse

import pytest
import torch
from safetensors.torch import save_file
from timm.utils import CheckpointSaver, ModelEmaV3
from torch import nn

from bench.config import ModelConfig, RunConfig
from bench.engine.models import build_model, load_weights
from bench.errors import BenchError
from bench.runs import load_torch

TINY = ModelConfig(name="resnet18d", small_input=True, kwargs={"channels": [8, 16, 32, 64], "stem_width": 8})


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(TINY, num_classes=10, in_chans=1)


def same_weights(model: nn.Module, source: nn.Module) -> bool:
    expected = source.state_dict()
    return model.state_dict().keys() == expected.keys() and all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def teacher_from(path, key=None) -> nn.Module:
    return build_model(TINY.model_copy(update={"checkpoint": str(path), "checkpoint_key": key}), 10, 1)


class Wrapper(nn.Module):
    """Holds its model as `.module`, as DistributedDataParallel does (so its keys start "module.")."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module


@pytest.fixture
def timm_checkpoint(tmp_path):
    """A checkpoint written by timm's own CheckpointSaver, as timm's train.py writes it: the model,
    its EMA (here away from the model), optimizer, epoch, metric, and the parsed command line."""
    model = tiny_model()
    ema = ModelEmaV3(model, decay=0.5)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.25)
    ema.update(model)
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="resnet18d")
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--model-ema", action="store_true")
    args = parser.parse_args(["--lr", "0.4", "--model-ema"])
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    saver = CheckpointSaver(model, optimizer, args=args, model_ema=ema, checkpoint_dir=str(tmp_path), recovery_dir=str(tmp_path))
    saver.save_checkpoint(epoch=2, metric=71.5)
    return tmp_path / "last.pth.tar", model, ema.module


def test_a_timm_train_checkpoint_loads_its_model_weights_without_unpickling_anything_else(timm_checkpoint):
    path, model, ema = timm_checkpoint
    loaded = load_torch(path)
    assert {"state_dict", "state_dict_ema", "epoch", "optimizer", "arch", "args", "version", "metric"} <= set(loaded)
    assert type(loaded["args"]) is argparse.Namespace and loaded["args"].lr == 0.4
    teacher = teacher_from(path)   # no key: "state_dict"
    assert same_weights(teacher, model) and not same_weights(teacher, ema)


def test_checkpoint_key_picks_the_ema_weights(timm_checkpoint):
    path, model, ema = timm_checkpoint
    assert same_weights(teacher_from(path, "state_dict_ema"), ema)
    assert same_weights(teacher_from(path, "state_dict"), model)


def test_a_checkpoint_key_that_is_absent_is_one_line_listing_the_keys(timm_checkpoint):
    path, _, _ = timm_checkpoint
    with pytest.raises(BenchError) as err:
        teacher_from(path, "state_dict_ema_kd")
    message = str(err.value)
    assert message == (f"model.checkpoint = {path}: no entry 'state_dict_ema_kd' (model.checkpoint_key) in the file; "
                       "it holds: arch, args, epoch, metric, optimizer, saver, state_dict, state_dict_ema, version")


@pytest.mark.parametrize("name", ["teacher.safetensors", "teacher.bin"])   # by suffix, by its header
def test_a_safetensors_file_loads(tmp_path, name):
    model = tiny_model(1)
    save_file(model.state_dict(), str(tmp_path / name))
    assert same_weights(teacher_from(tmp_path / name), model)


@pytest.mark.parametrize("wrap", [
    Wrapper,                                        # DistributedDataParallel: module.
    torch.compile,                                  # torch.compile: _orig_mod.
    lambda m: torch.compile(Wrapper(m)),            # compiled DDP: _orig_mod.module.
    lambda m: Wrapper(torch.compile(m)),            # DDP of a compiled model: module._orig_mod.
], ids=["ddp", "compile", "compile-ddp", "ddp-compile"])
def test_prefixed_state_dicts_load(tmp_path, wrap):
    model = tiny_model(2)
    state = wrap(model).state_dict()
    assert not set(state) & set(model.state_dict())   # every key carries the prefix
    torch.save(state, tmp_path / "teacher.pt")
    assert same_weights(teacher_from(tmp_path / "teacher.pt"), model)
    torch.save({"model": state, "epoch": 3}, tmp_path / "last.pt")   # a run's checkpoint of a wrapped model
    assert same_weights(teacher_from(tmp_path / "last.pt"), model)


class Payload:
    """Unpickling this would run `open(marker, "w")`: code in a file, not weights."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (self.marker, "w")


class Opaque:
    pass


def test_a_file_with_pickled_objects_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "teacher.pt"
    torch.save({"state_dict": tiny_model().state_dict(), "hook": Payload(str(marker))}, path)
    with pytest.raises(BenchError) as err:
        teacher_from(path)
    assert str(err.value) == (f"model.checkpoint = {path}: not a readable checkpoint (it pickles objects other than "
                              "weights: io.open; refused unread)")
    assert not marker.exists()
    torch.load(path, weights_only=False)   # what an unsafe load would have done
    assert marker.exists()


def test_a_custom_class_instance_is_refused_by_name(tmp_path):
    path = tmp_path / "teacher.pt"
    torch.save({"state_dict": tiny_model().state_dict(), "extra": Opaque()}, path)
    with pytest.raises(BenchError, match=r"it pickles objects other than weights: .*Opaque; refused unread\)$") as err:
        load_weights(tiny_model(), path, "teacher resnet18d for 10 classes", "model.checkpoint")
    assert "\n" not in str(err.value)


def test_a_file_that_fits_no_format_keeps_its_one_line_error(tmp_path):
    torch.save([1, 2, 3], tmp_path / "list.pt")
    with pytest.raises(BenchError, match=r"^model.checkpoint = .*list.pt: not a state dict of model weights \(list\)$"):
        teacher_from(tmp_path / "list.pt")
    (tmp_path / "text.pt").write_text("not weights")
    with pytest.raises(BenchError, match=r"^model.checkpoint = .*text.pt: not a readable checkpoint \("):
        teacher_from(tmp_path / "text.pt")


def test_checkpoint_key_changes_the_hash_only_when_set():
    """Unset, the key stays out of the hash (recorded runs keep theirs: test_ablation's committed
    Fashion-MNIST runs); set, it is another config."""
    cfg = RunConfig(model=TINY.model_copy(update={"checkpoint": "t.pt"}))
    keyed = RunConfig(model=TINY.model_copy(update={"checkpoint": "t.pt", "checkpoint_key": "state_dict_ema"}))
    assert cfg.config_hash() != keyed.config_hash()
    with pytest.raises(ValueError, match="model.checkpoint_key='state_dict_ema' needs model.checkpoint"):
        ModelConfig(checkpoint_key="state_dict_ema")
