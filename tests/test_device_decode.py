"""`data.decode_on: device`: workers send the files' bytes, the device decodes, crops and flips
with the worker path's draws; other formats and refused JPEGs fall back to the CPU."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

import bench.engine.data.device_decode as dd
from bench.cli import main
from bench.config import DataConfig, RunConfig
from bench.config.validation import validate
from bench.engine.data import build_data
from bench.engine.data.crops import CropFlip, FolderCrops
from bench.engine.data.fake import write_imagefolder
from bench.engine.data.images import FolderImages, eval_transform, scan_split
from bench.errors import BenchError, ConfigError

from conftest import tiny_recipe

CPU = torch.device("cpu")


def _cfg(root, **kw) -> DataConfig:
    return DataConfig(dataset="imagefolder", root=str(root), global_batch_size=8, eval_batch_size=8, image_size=32,
                      eval_resize=36, workers=0, augment_on="device", **kw)


def _both(samples, transform, keys):
    """uint8 crops of the same items: the worker path (PIL decode) and the device-decode path;
    `transform`: the training `CropFlip` or the evaluation transform."""
    items = FolderCrops(samples, transform) if isinstance(transform, CropFlip) else FolderImages(samples, transform)
    worker = torch.stack([items[k][0] for k in keys])
    device, _ = dd.DeviceDecode(samples, transform, CPU)(*dd.collate_bytes([dd.FolderBytes(samples)[k] for k in keys]))
    return worker, device


def _crops(root, **kw) -> CropFlip:
    return CropFlip.from_config(_cfg(root, **kw), 32)


def _mad(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


def test_same_crops_and_flips_as_the_worker_path(tmp_path):
    write_imagefolder(tmp_path)
    _, samples = scan_split(tmp_path / "train")
    keys = [(i % len(samples), 1_000 + 7 * i) for i in range(48)]   # 48 draws of crop and flip
    worker, device = _both(samples, _crops(tmp_path), keys)
    assert worker.shape == device.shape == (48, 3, 32, 32) and worker.dtype == device.dtype == torch.uint8
    # PIL and torchvision's libjpeg-turbo may round differently: a level or two at most
    assert max(_mad(w, d) for w, d in zip(worker, device)) < 2
    shifted = [(i, s + 1) for i, s in keys]                       # other draws: other boxes and flips
    assert _mad(worker, _both(samples, _crops(tmp_path), shifted)[1]) > 10
    # the same boxes unmirrored (the flip is drawn after the box): about half the items are mirrored
    unflipped = _both(samples, _crops(tmp_path, hflip=False), keys)[1]
    mirrored = [_mad(d, u.flip(-1)) < 2 for d, u in zip(device, unflipped)]
    assert all(m or _mad(d, u) < 2 for m, d, u in zip(mirrored, device, unflipped)) and 10 < sum(mirrored) < 38
    worker, device = _both(samples, eval_transform(32, 36, to_float=False), keys[:8])
    assert worker.shape == device.shape and _mad(worker, device) < 2


def test_batches_match_the_worker_path_through_the_loaders(tmp_path):
    write_imagefolder(tmp_path)
    plain = dict(color_jitter=0.0, lighting_std=0.0)   # normalisation only: the pixels compare
    worker, device = (build_data(_cfg(tmp_path, decode_on=d, **plain), seed=3) for d in ("worker", "device"))
    assert isinstance(device.train.dataset, dd.FolderBytes) and isinstance(worker.train.dataset, FolderCrops)
    for split in ("train", "val"):
        for (xw, yw), (xd, yd) in zip(getattr(worker, split).epoch(1), getattr(device, split).epoch(1)):
            assert xw.shape == xd.shape and xd.dtype == torch.float32 and torch.equal(yw, yd)
            assert (xw - xd).abs().mean() < 2 / 255 / 0.225
    resumed = list(device.train.epoch(1, start=2))                # a resumed epoch: the same batches on
    assert len(resumed) == len(device.train) - 2
    assert torch.equal(resumed[0][0], list(device.train.epoch(1))[2][0])


def test_png_and_refused_jpegs_decode_on_the_cpu(tmp_path, monkeypatch):
    write_imagefolder(tmp_path, classes=2, train_per_class=3)
    rng = np.random.default_rng(1)
    folder = tmp_path / "train" / "n00000000"
    Image.fromarray(rng.integers(0, 256, size=(44, 52, 3), dtype=np.uint8)).save(folder / "extra.png")
    Image.fromarray(rng.integers(0, 256, size=(48, 40, 3), dtype=np.uint8)).convert("CMYK").save(folder / "cmyk.JPEG")
    _, samples = scan_split(tmp_path / "train")
    cmyk_size = (folder / "cmyk.JPEG").stat().st_size
    real, calls = dd.decode_jpeg, []

    def refusing(data, **kw):   # a device decoder without CMYK: it refuses the batch, then that file
        calls.append(len(data) if isinstance(data, list) else 1)
        if any(d.numel() == cmyk_size for d in (data if isinstance(data, list) else [data])):
            raise RuntimeError("unsupported colour space")
        return real(data, **kw)

    monkeypatch.setattr(dd, "decode_jpeg", refusing)
    keys = [(i, 50 + i) for i in range(len(samples))]
    worker, device = _both(samples, _crops(tmp_path), keys)
    assert max(_mad(w, d) for w, d in zip(worker, device)) < 2
    assert calls[0] == len(samples) - 1 and len(calls) == len(samples)   # the PNG never reached it; then one by one
    data = build_data(_cfg(tmp_path, decode_on="device"), seed=0)
    assert all(x.shape == (8, 3, 32, 32) for x, _ in data.train.epoch(0))


@pytest.mark.parametrize("content,workers", [(b"not a jpeg", 0), (b"\xff\xd8\xff\xe0 broken", 0), (b"not a jpeg", 1)])
def test_corrupt_image_is_named_in_one_line(tmp_path, content, workers):
    write_imagefolder(tmp_path, train_per_class=2)
    bad = tmp_path / "train" / "n00000001" / "train_1_0.JPEG"
    bad.write_bytes(content)
    data = build_data(_cfg(tmp_path, decode_on="device").model_copy(update={"workers": workers}), 0)
    with pytest.raises(BenchError) as err:
        list(data.train.epoch(0))
    assert str(err.value).startswith(f"{bad}: unreadable image") and "\n" not in str(err.value)


def test_decode_on_device_needs_augment_on_device_and_is_another_run():
    with pytest.raises(ConfigError) as err:
        validate(RunConfig, {"data": {"dataset": "imagenet", "decode_on": "device"}}, "r.yaml")
    assert str(err.value) == ("r.yaml: data: decode_on=device needs augment_on=device (not worker): "
                              "images decoded on the device are augmented there")
    folder = {"dataset": "imagenet", "augment_on": "device"}
    base = RunConfig.model_validate({"data": folder})
    assert RunConfig.model_validate({"data": {**folder, "decode_on": "worker"}}).config_hash() == base.config_hash()
    assert RunConfig.model_validate({"data": {**folder, "decode_on": "device"}}).config_hash() != base.config_hash()


def test_smoke_run_with_decode_on_device(tmp_path, write_recipe, capsys):
    root = write_imagefolder(tmp_path / "data")
    recipe = write_recipe(tiny_recipe("decode-on-device", {
        "model": {"small_input": None},
        "data": {"dataset": "imagefolder", "root": str(root), "global_batch_size": 8, "eval_batch_size": 8, "image_size": 128,
                 "augment_on": "device", "decode_on": "device"},
        "schedule": {"kind": "cosine", "epochs": 2, "warmup_epochs": 0}}, [{"name": "baseline"}]))
    out = tmp_path / "out"
    assert main([str(recipe), "--smoke", "--out", str(out), "--no-progress"]) == 0
    final = next(out.rglob("final.json"))
    config = (final.parent / "config.yaml").read_text()
    assert "decode_on: device" in config and json.loads(final.read_text())
