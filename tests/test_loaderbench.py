"""The ImageFolder loader benchmark: real JPEGs through the harness's own loader, paper rates by formula."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from PIL import Image

import bench.engine.data.crops as crops
import bench.engine.data.device_decode as device_decode
import bench.engine.data.images as images
import bench.perf.loader as lb
from bench.cli import main
from bench.perf.figures import plot_pipeline
from bench.perf.pipeline import format_pipeline, measure_pipeline
from bench.perf.throughput import BenchSettings


def test_generated_jpegs_are_photo_sized_and_compress_like_photos(tmp_path):
    lb.write_photo_tree(tmp_path, images=3, classes=2)
    files = sorted(tmp_path.glob("train/*/*.JPEG"))
    assert len(files) == 3 and len({f.parent.name for f in files}) == 2
    with Image.open(files[0]) as img:
        assert img.size == (500, 375) and img.format == "JPEG"
    # uniform noise of this size is ~400 KB at quality 90; a smooth photo-like field is far smaller
    assert all(f.stat().st_size < 120_000 for f in files)


def test_loader_rates_come_from_the_real_pipeline(tmp_path, monkeypatch):
    lb.write_photo_tree(tmp_path, images=6, classes=2, size=(96, 72))
    seen = []
    real = images.read_image
    monkeypatch.setattr(images, "read_image", lambda p: seen.append(p) or real(p))
    monkeypatch.setattr(crops, "read_image", lambda p: seen.append(p) or real(p))   # the workers' crops
    read = []
    real_read_file = device_decode.read_file
    monkeypatch.setattr(device_decode, "read_file", lambda p: read.append(p) or real_read_file(p))
    r = lb.measure_loader(tmp_path, workers=[0], batch_size=2, image_size=32, seconds=0.05, device=torch.device("cpu"))
    assert r["images"] == 6 and {p: set(v) for p, v in r["loader_images_per_s"].items()} == {
        "worker": {"0"}, "device": {"0"}, "device_decode": {"0"}}
    assert all(str(tmp_path) in p for p in seen) and len(seen) > 6   # decode and the loader both read the files
    assert all(str(tmp_path) in p for p in read) and len(read) > 2    # the decode-on-device path's files too
    assert r["decode_images_per_s"] > 0 and min(r["transform_images_per_s"].values()) > 0
    assert r["device_augment_images_per_s"] > 0 and r["device_decode_images_per_s"] > 0
    assert r["device_augment_device"] == "cpu"
    table = lb.format_result(r)
    assert "| workers | worker path images/s | per worker | device path images/s | per worker | decode-on-device path" in table
    assert "decode, crop and flip" in table
    for path in ("worker", "device", "device_decode"):
        assert r["loader_images_per_s_per_worker"][path]["0"] == r["loader_images_per_s"][path]["0"]
        best = r["loader_images_per_s"][path]["0"]
        assert r["cores_per_gpu"][path]["resnet50_v1"] == pytest.approx(1_281_167 / (4.4 * 60 * 8) / best)   # Table 3: 4.4 min on 8 V100s


def test_the_device_paths_workers_send_uint8_or_the_files_bytes(tmp_path, monkeypatch):
    lb.write_photo_tree(tmp_path, images=4, classes=2, size=(96, 72))
    sent = []
    real = lb._loader_rates
    monkeypatch.setattr(lb, "_loader_rates", lambda dataset, *a: sent.append(dataset[(0, 0)][0]) or real(dataset, *a))
    lb.measure_loader(tmp_path, workers=[0], batch_size=2, image_size=32, seconds=0.02)
    assert [x.dtype for x in sent] == [torch.float32, torch.uint8, torch.uint8]
    assert sent[1].shape == (3, 32, 32) and sent[2].dim() == 1   # crops; then a JPEG file's bytes
    assert bytes(sent[2][:3].tolist()) == images.JPEG_MAGIC


def test_command_writes_json_once_and_refuses_bad_input(tmp_path, capsys):
    out = tmp_path / "loader.json"
    args = ["bench-loader", "--images", "4", "--batch-size", "2", "--image-size", "32", "--workers", "1",
            "--seconds", "0.05", "--out", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert result["source"].startswith("generated: 4 JPEGs") and result["loader_images_per_s"]["device"]["1"] > 0
    assert result["loader_images_per_s"]["device_decode"]["1"] > 0
    assert "cores per GPU" in capsys.readouterr().out
    with Image.open(out.with_suffix(".png")) as figure:   # the figure beside the JSON
        assert figure.format == "PNG"
    before = out.read_text()
    assert main(args) == 2 and out.read_text() == before
    assert "never overwritten" in capsys.readouterr().err
    assert main(["bench-loader", str(tmp_path / "none")]) == 2
    err = capsys.readouterr().err
    assert "none/train: no class folders" in err and err.count("\n") == 1
    assert main(["bench-loader", "--batch-size", "0"]) == 2
    assert "bench-loader --batch-size = 0: must be at least 1" in capsys.readouterr().err


def test_pipeline_trains_through_the_real_loader_on_every_path(tmp_path, monkeypatch):
    lb.write_photo_tree(tmp_path, images=8, classes=2, size=(96, 72))
    read, real_read_file = [], images.read_file
    monkeypatch.setattr(images, "read_file", lambda p: read.append(p) or real_read_file(p))
    s = BenchSettings(model="resnet18d", image_size=16, batch_size=2, num_classes=5, steps=2, rounds=1, precision="fp32",
                      device="cpu", model_kwargs={"channels": [4, 8, 16, 32], "stem_width": 4})
    r = measure_pipeline(tmp_path, s, workers=[0])
    t = r["cores"]
    assert set(r["variants"]) == {"synthetic", f"worker/0w/{t}t", f"device/0w/{t}t"}
    assert r["variants"]["synthetic"]["ratio_to_synthetic"] == 1.0 and r["default_workers"] == 0
    assert all(v["images_per_s"] > 0 for v in r["variants"].values())
    # (warm-up + 1 round) x 2 batches x 2 images a path, every one read from its file
    assert len(read) == 2 * 2 * 2 * 2 and all(p.startswith(str(tmp_path)) for p in read)
    table = format_pipeline(r)
    assert f"| device/0w/{t}t (workers: auto) |" in table and "| synthetic |" in table
    fig = plot_pipeline({**r, "source": "generated", "environment": {"device": "cpu", "device_name": "x86_64", "cpu_threads": t,
                                                                    "torch": torch.__version__}})
    labels = [t.get_text() for t in fig.axes[0].get_yticklabels()]
    assert labels[0] == f"worker/0w/{t}t (auto)" and len(labels) == 2 and "synthetic" not in labels
    assert all(v["ratio_min"] <= v["ratio_to_synthetic"] <= v["ratio_max"] for v in r["variants"].values())


def test_the_grid_counts_real_jobs_alone_and_side_by_side_and_names_the_threads_for_one_and_two_jobs(tmp_path):
    from bench.perf.grid import best_threads, format_grid, measure_cell
    from bench.perf.throughput import BenchSettings
    lb.write_photo_tree(tmp_path, images=8, classes=2, size=(96, 72))
    s = BenchSettings(model="resnet18d", image_size=32, batch_size=2, precision="fp32", device="cpu", steps=2,
                      model_kwargs={"channels": [4, 8, 8, 8], "stem_width": 4}, num_classes=2,
                      teacher="resnet18d", teacher_kwargs={"channels": [4, 8, 8, 8], "stem_width": 4})
    rates = measure_cell(tmp_path, s, "worker", workers=0, threads=1, jobs=2, seconds=0.5, lead_s=1.0)
    assert len(rates) == 2 and all(r > 0 for r in rates)
    cells = [{"workers": 1, "threads": 1, "alone": 50.0, "two": [30.0, 30.0], "collapsed": False},
             {"workers": 1, "threads": 2, "alone": 80.0, "two": [1.0, 1.5], "collapsed": True},
             {"workers": 0, "threads": 2, "alone": 90.0, "two": [40.0, 41.0], "collapsed": False}]
    assert best_threads(cells) == {"0": {"one_job": 2, "two_jobs": 2},
                                   "1": {"one_job": 2, "two_jobs": 1}}   # 1 worker: 2 threads are faster alone, collapse two jobs
    table = format_grid({"settings": dataclasses.asdict(s), "path": "worker", "cores": 2, "window_s": 1.0,
                         "cells": cells, "best": best_threads(cells)})
    assert "| 1 | 2 | 80.0 | 1.0, 1.5 | yes |" in table
