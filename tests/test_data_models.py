"""Data sets in their real on-disk formats, the paper's models, and every recipe."""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.transforms import v2

from bench.cli import main
from bench.config import DataConfig, ModelConfig, load_recipe, parse_override
from bench.engine.data import build_data, stratified_holdout
from bench.engine.data.device_aug import DeviceAugment
from bench.engine.data.fake import write_cifar, write_fake_data, write_fashion_mnist, write_idx, write_imagefolder
from bench.engine.data.images import read_image
from bench.engine.data.small import DEBIAN_FASHION_MNIST, load_fashion_mnist, read_idx
from bench.engine.models import build_model
from bench.errors import BenchError

RECIPES = sorted(Path(__file__).resolve().parent.parent.joinpath("recipes").glob("*.yaml"))


def folder_cfg(root, workers: int = 0) -> DataConfig:
    return DataConfig(dataset="imagefolder", root=str(root), global_batch_size=8, eval_batch_size=8,
                      image_size=32, workers=workers)


def test_imagefolder_batches_are_deterministic_and_split_by_rank(tmp_path):
    write_imagefolder(tmp_path)
    data = build_data(folder_cfg(tmp_path), seed=3)
    assert (data.num_classes, data.in_chans, len(data.train), len(data.val)) == (4, 3, 4, 2)
    images, labels = next(data.train.epoch(0))
    assert images.shape == (8, 3, 32, 32) and images.dtype == torch.float32
    again, _ = next(build_data(folder_cfg(tmp_path), seed=3).train.epoch(0))
    assert torch.equal(images, again)                       # same (seed, epoch): same pixels
    other, _ = next(data.train.epoch(1))
    assert not torch.equal(images, other)
    halves = [next(build_data(folder_cfg(tmp_path), 3, rank=r, world_size=2).train.epoch(0)) for r in (0, 1)]
    assert torch.equal(torch.cat([halves[0][1], halves[1][1]]).sort().values, labels.sort().values)
    assert torch.equal(halves[0][0], images[0::2])          # a rank's share: the same augmented images
    val_images, _ = next(data.val.epoch(0))
    assert torch.equal(val_images, next(data.val.epoch(5))[0])  # eval has no randomness


def test_imagefolder_errors_name_the_place(tmp_path):
    with pytest.raises(BenchError, match="data.root is not set for imagenet: set IMAGENET_ROOT"):
        build_data(DataConfig(dataset="imagenet"), 0)
    with pytest.raises(BenchError, match=f"no directory {tmp_path}/train"):
        build_data(folder_cfg(tmp_path), 0)
    write_imagefolder(tmp_path)
    shutil.move(tmp_path / "val" / "n00000003", tmp_path / "val" / "n00000009")
    with pytest.raises(BenchError, match="differ between train and val .only in train: n00000003; only in val: n00000009"):
        build_data(folder_cfg(tmp_path), 0)
    shutil.move(tmp_path / "val" / "n00000009", tmp_path / "val" / "n00000003")
    empty = tmp_path / "train" / "n00000003"
    shutil.rmtree(empty)
    empty.mkdir()
    with pytest.raises(BenchError, match="Found no valid file for the classes n00000003"):
        build_data(folder_cfg(tmp_path), 0)


@pytest.mark.parametrize("workers", [0, 1])
def test_corrupt_image_is_named_in_one_line(tmp_path, workers):
    write_imagefolder(tmp_path, train_per_class=2)
    bad = tmp_path / "train" / "n00000001" / "train_1_0.JPEG"
    bad.write_bytes(b"not a jpeg")
    data = build_data(folder_cfg(tmp_path, workers=workers), 0)
    with pytest.raises(BenchError) as err:
        list(data.train.epoch(0))
    assert str(err.value).startswith(f"{bad}: unreadable image") and "\n" not in str(err.value)


@pytest.mark.parametrize("mode,fmt", [("RGB", "JPEG"), ("L", "JPEG"), ("CMYK", "JPEG"), ("RGB", "PNG"), ("P", "PNG")])
def test_read_image_gives_pils_rgb_pixels_in_its_layout(tmp_path, mode, fmt, monkeypatch):
    rng = np.random.default_rng(1)
    path = tmp_path / f"x.{fmt.lower()}"
    Image.fromarray(rng.integers(0, 256, (30, 41, 3), dtype=np.uint8)).convert(mode).save(path, fmt, quality=85)
    used_pil = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda p, *a: used_pil.append(p) or real_open(p, *a))
    ours = read_image(str(path))
    with real_open(path) as image:
        theirs = v2.functional.pil_to_tensor(image.convert("RGB"))
    assert ours.dtype == torch.uint8 and ours.shape == (3, 30, 41) and ours.stride() == theirs.stride()
    assert torch.equal(ours, theirs)                                        # bit for bit, every format
    assert bool(used_pil) == (fmt == "PNG" or mode == "CMYK")              # libjpeg-turbo, no PIL, for RGB/gray JPEGs
    truncated = tmp_path / f"cut.{fmt.lower()}"
    truncated.write_bytes(path.read_bytes()[:200])
    with pytest.raises(BenchError, match=f"^{truncated}: unreadable image"):
        read_image(str(truncated))


def test_lighting_adds_one_colour_along_the_principal_components():
    images = (torch.rand(4, 3, 5, 6) * 255).to(torch.uint8)
    plain = DeviceAugment(DataConfig(dataset="imagenet", color_jitter=0.0, lighting_std=0.0), torch.device("cpu"))(images, seed=0)
    lit = DeviceAugment(DataConfig(dataset="imagenet", color_jitter=0.0, lighting_std=0.1), torch.device("cpu"))(images, seed=0)
    shift = lit - plain
    assert shift.abs().max() > 0 and torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-6)


@pytest.mark.parametrize("name,classes", [("cifar10", 10), ("cifar100", 100)])
def test_cifar_reads_pickled_batches(tmp_path, name, classes):
    write_cifar(tmp_path, name, per_batch=20)
    data = build_data(DataConfig(dataset=name, root=str(tmp_path), global_batch_size=16, eval_batch_size=16), 0)
    n_train = 100 if name == "cifar10" else 20
    assert (data.num_classes, data.image_size, len(data.train.labels), len(data.val.labels)) == (classes, 32, n_train, 20)
    images, labels = next(data.train.epoch(0))
    assert images.shape == (16, 3, 32, 32) and labels.max() < classes
    assert abs(float(data.val.images.float().mean()) - 127.5) < 10       # stored raw, normalized per batch
    assert abs(float(next(data.val.epoch(0))[0].mean())) < 0.2


def test_cifar_missing_and_corrupt(tmp_path):
    with pytest.raises(BenchError, match=f"no CIFAR-10 batches in {tmp_path}/cifar-10-batches-py; add --set data.download=true"):
        build_data(DataConfig(dataset="cifar10", root=str(tmp_path)), 0)
    write_cifar(tmp_path, "cifar10")
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"\x80\x02garbage")
    with pytest.raises(BenchError, match="cifar-10-batches-py: unreadable CIFAR-10 batches"):
        build_data(DataConfig(dataset="cifar10", root=str(tmp_path), global_batch_size=8), 0)


def test_idx_round_trip_and_errors(tmp_path):
    array = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    for name in ("a.idx", "a.idx.gz"):
        write_idx(tmp_path / name, array)
        assert np.array_equal(read_idx(tmp_path / name), array)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x0d\x01")
    with pytest.raises(BenchError, match="bad: not an IDX file of unsigned bytes"):
        read_idx(tmp_path / "bad")


def test_fashion_mnist_from_idx_files_and_missing(tmp_path):
    write_fashion_mnist(tmp_path / "fm", n_train=32, n_test=16)
    data = build_data(DataConfig(dataset="fashion_mnist", root=str(tmp_path / "fm"), global_batch_size=16), 0)
    assert (data.in_chans, data.image_size, len(data.train.labels), len(data.val.labels)) == (1, 28, 32, 16)
    assert next(data.train.epoch(0))[0].shape == (16, 1, 28, 28)
    with pytest.raises(BenchError, match=rf"Fashion-MNIST: no train-images-idx3-ubyte\[.gz\] in {tmp_path}.*apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(str(tmp_path), download=False)


def test_holdout_validates_on_held_out_training_images_not_the_test_split(tmp_path):
    root = write_fashion_mnist(tmp_path / "fm", n_train=200, n_test=16)
    write_idx(root / "t10k-images-idx3-ubyte.gz", np.zeros((16, 28, 28), np.uint8))   # unlike every training image
    x_train, y_train, _, _ = load_fashion_mnist(str(root), download=False)
    cfg = DataConfig(dataset="fashion_mnist", root=str(root), global_batch_size=16, holdout=40)
    data, again = build_data(cfg, 0), build_data(cfg, 1)
    assert (len(data.train.labels), len(data.val.labels)) == (160, 40)
    assert torch.equal(data.val.labels, again.val.labels)   # one split, whatever the seed
    train_idx, val_idx = stratified_holdout(y_train.numpy(), 40)
    assert not set(train_idx) & set(val_idx)
    assert torch.equal(data.val.labels, y_train[val_idx]) and torch.equal(data.train.labels, y_train[train_idx])
    assert torch.equal(data.val.images, x_train[val_idx]) and torch.equal(data.train.images, x_train[train_idx])
    for c in range(10):   # each class keeps its share
        assert abs(int((data.val.labels == c).sum()) - 0.2 * int((y_train == c).sum())) < 1
    # normalised with the mean and std of the 160 training images alone
    mean = x_train[train_idx].float().mean()
    assert float(data.train.mean.flatten()[0]) == pytest.approx(float(mean))
    with pytest.raises(BenchError, match="data.holdout = 200: must be below the 200 training images of fashion_mnist"):
        build_data(cfg.model_copy(update={"holdout": 200}), 0)
    with pytest.raises(ValueError, match="holdout=5: not read for digits"):
        DataConfig(dataset="digits", holdout=5)


@pytest.mark.skipif(not Path(DEBIAN_FASHION_MNIST).is_dir() and not os.environ.get("CI"), reason="apt-get install dataset-fashion-mnist (CI does)")
def test_fashion_mnist_from_debian_package(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # no ./data: the files must come from Debian's place
    x_train, y_train, x_val, y_val = load_fashion_mnist(None, download=False)
    assert x_train.shape == (60000, 1, 28, 28) and x_val.shape == (10000, 1, 28, 28)
    assert torch.equal(torch.bincount(y_train), torch.full((10,), 6000))


def test_resnet50_v1_strides_in_the_first_1x1():
    model = build_model(ModelConfig(name="resnet50_v1", kwargs={"channels": [8, 16, 32, 64]}), 10)
    block = model.layer2[0]
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
    assert model.eval()(torch.zeros(1, 3, 64, 64)).shape == (1, 10)


@pytest.mark.parametrize("name,gflops", [("resnet50_v1", 3.8), ("resnet50", 4.1), ("resnet50c", 4.3), ("resnet50d", 4.3)])
def test_table5_parameters_and_flops(name, gflops):
    from bench.engine.models import measure_model
    m = measure_model(ModelConfig(name=name), 224)
    assert 25.5 < m["params_m"] < 25.7 and abs(m["gflops"] - gflops) < 0.1


def test_weights_from_a_checkpoint(tmp_path):
    from bench.engine.models import build_model
    cfg = ModelConfig(name="resnet18d", small_input=True, kwargs={"channels": [8, 16, 32, 64], "stem_width": 8})
    source = build_model(cfg, 10)
    nn.init.normal_(source.fc.weight)
    ddp_state = {"model": {f"module.{k}": v for k, v in source.state_dict().items()}}
    torch.save(ddp_state, tmp_path / "last.pt")
    loaded = build_model(cfg.model_copy(update={"checkpoint": str(tmp_path / "last.pt")}), 10)
    assert torch.equal(loaded.fc.weight, source.fc.weight)
    with pytest.raises(BenchError, match="weights do not fit the model"):
        build_model(cfg.model_copy(update={"checkpoint": str(tmp_path / "last.pt")}), 7)
    with pytest.raises(BenchError, match="model.checkpoint = .*nope.pt: no such file"):
        build_model(cfg.model_copy(update={"checkpoint": str(tmp_path / "nope.pt")}), 10)


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_every_recipe_resolves_and_names_its_table(recipe):
    from bench.ablation import plan
    loaded = load_recipe(recipe)
    assert loaded.paper_table in ("table2", "table3", "table4", "table5", "table6")
    specs = plan(loaded, smoke=True, where=str(recipe))
    assert specs and all(s.config.data.max_train_batches == 3 for s in specs)



@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.stem)
def test_recipe_smoke_on_generated_data(recipe, tmp_path, monkeypatch):
    """Every recipe whole (its teachers, every model, step and seed) through the CLI's --smoke on
    generated files in the real formats (the ImageNet-sized models take minutes on a CPU)."""
    import pandas as pd

    from bench.ablation import plan

    loaded = load_recipe(recipe)
    paths = write_fake_data(tmp_path / "data")
    monkeypatch.setenv("IMAGENET_ROOT", str(paths["imagenet"]))
    monkeypatch.setenv("CIFAR_ROOT", str(paths["cifar"]))
    monkeypatch.setenv("FASHION_MNIST_ROOT", str(paths["fashion_mnist"]))
    out = tmp_path / "out"
    # compiling every smoke run would take minutes: torch.compile's exact resume is tested in test_engine
    settings = ["runtime.compile=false"] if loaded.base.get("runtime", {}).get("compile") else []
    # bf16 and fp16 autocast run emulated on a CPU without AVX-512 or AMX (a ResNet-50 step 8x
    # fp32's time, bench/engine/runtime.py): the smoke runs in fp32, and each precision has its
    # own tests (test_engine: bf16, and fp16 with its gradient scaler)
    settings.append("efficient.precision=fp32")
    overrides = [x for text in settings for x in ("--set", text)]
    assert main([str(recipe), "--smoke", "--out", str(out), "--no-progress", *overrides]) == 0
    planned = plan(loaded, smoke=True, where=str(recipe), overrides=tuple(parse_override(x) for x in settings))
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs["path"]) == sorted(str(s.path) for s in planned)
    assert all((out / s.path / "final.json").is_file() for s in planned)
    assert (out / "table.md").is_file() and (out / "figures" / "staircase.png").is_file()


@pytest.mark.parametrize("scheme, gain", [("xavier", 1.0), ("msra_prelu", math.sqrt(2 / (1 + 0.25**2)))])
def test_model_init_draws_every_layer_at_its_formulas_std(scheme, gain):
    """The paper's Xavier: U[−a, a], a = √(6 / (fan_in + fan_out)), so std = √(2 / (fan_in + fan_out));
    GluonCV's MSRA-PReLU: a normal with that std times √(2 / (1 + 0.25²)). Fans as MXNet counts them."""
    model = build_model(ModelConfig(name="resnet18d", kwargs={"channels": [8, 16, 32, 64], "stem_width": 8}, init=scheme),
                        10, zero_gamma=True)
    checked = 0
    for name, w in model.named_parameters():
        if w.dim() < 2:
            continue
        receptive = w[0][0].numel() if w.dim() > 2 else 1
        std = gain * math.sqrt(2 / (w.shape[1] * receptive + w.shape[0] * receptive))
        if scheme == "xavier":
            assert w.abs().max() <= math.sqrt(3) * std * (1 + 1e-6), name   # bounded: uniform on [−a, a]
        if w.numel() >= 2000:   # enough draws for the std to within a few per cent
            assert w.std().item() == pytest.approx(std, rel=0.08) and abs(w.mean().item()) < 0.1 * std, name
            if scheme == "msra_prelu":   # normal, not uniform: about 7 % lie beyond the uniform's bound √3·std
                assert (w.abs() > 1.8 * std).float().mean() > 0.03, name
            checked += 1
    assert checked >= 8
    last = {id(block.bn2) for block in model.modules() if callable(getattr(block, "zero_init_last", None))}
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):   # γ = 1, β = 0; zero γ (after the init) in each block's last
            assert (m.bias == 0).all() and (m.weight == (0.0 if id(m) in last else 1.0)).all()
    assert (model.get_classifier().bias == 0).all()


def test_model_init_keeps_timm_by_default_and_refuses_pretrained_weights():
    torch.manual_seed(0)
    default = build_model(ModelConfig(name="resnet18d", kwargs={"channels": [8, 16, 32, 64], "stem_width": 8}), 10)
    torch.manual_seed(0)
    timm_init = build_model(ModelConfig(name="resnet18d", kwargs={"channels": [8, 16, 32, 64], "stem_width": 8}, init="timm"), 10)
    assert all(torch.equal(a, b) for a, b in zip(default.state_dict().values(), timm_init.state_dict().values()))
    with pytest.raises(ValueError, match="model.init=xavier would overwrite the weights of model.pretrained"):
        ModelConfig(name="resnet18d", pretrained="a1_in1k", init="xavier")


def test_pretrained_weights_on_an_offline_node_fail_in_seconds_naming_the_way_out(monkeypatch):
    """No network: one line naming HF_HUB_OFFLINE and model.checkpoint, before huggingface_hub's
    minute of retries; with HF_HUB_OFFLINE set, timm is asked (it reads the local cache)."""
    import socket

    import timm

    from bench.engine import models

    def unreachable(address, timeout=None):
        raise socket.gaierror(-2, "Name or service not known")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    asked = []
    monkeypatch.setattr(timm, "create_model", lambda name, **kw: asked.append(name) or (_ for _ in ()).throw(OSError("no cache")))
    with pytest.raises(BenchError) as err:
        models.build_model(ModelConfig(name="resnet18d", pretrained="ra2_in1k"), 10)
    assert asked == []      # refused before timm (and huggingface_hub's retries) were asked
    assert str(err.value).startswith("model.pretrained = ra2_in1k (resnet18d.ra2_in1k): the Hugging Face Hub "
                                     "(huggingface.co:443) cannot be reached")
    assert "HF_HUB_OFFLINE=1" in str(err.value) and "model.checkpoint" in str(err.value)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BenchError, match="no cache"):
        models.build_model(ModelConfig(name="resnet18d", pretrained="ra2_in1k"), 10)
    assert asked == ["resnet18d.ra2_in1k"]
