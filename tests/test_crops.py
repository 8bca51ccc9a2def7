"""The device path's workers: `CropFlip` cuts the pixels torchvision's v2 pipeline cuts for the
same seeds, in-process loading on threads gives the batches of one thread and of worker processes, and `data.workers: auto`."""
from __future__ import annotations

import threading

import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

import bench.engine.runtime as runtime
from bench.config import DataConfig, RunConfig
from bench.engine.data import build_data
from bench.engine.data.crops import CropFlip, FolderCrops
from bench.engine.data.fake import write_imagefolder
from bench.engine.data.images import FolderImages, LoaderBatches, loader_pool, scan_split, train_transform
from bench.perf.loader import write_photo_tree

SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


def _torchvision(image: Image.Image, seed: int, size: int) -> torch.Tensor:
    """The crop and flip as torchvision's v2 transforms draw and cut them (global generator)."""
    steps = v2.Compose([v2.PILToTensor(), v2.RandomResizedCrop(size, scale=SCALE, ratio=RATIO, antialias=True),
                        v2.RandomHorizontalFlip()])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return steps(image)


def _mad(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> str:
    root = write_photo_tree(tmp_path_factory.mktemp("photo"), images=1, classes=1, size=(320, 240))
    return str(next(root.glob("train/*/*.JPEG")))


def test_the_boxes_and_flips_of_torchvisions_pipeline_for_the_same_seeds(photo):
    crop = CropFlip(48, SCALE, RATIO)
    ours = [crop.from_file(photo, seed) for seed in range(40)]   # decoded by torchvision, not PIL
    with Image.open(photo) as image:
        theirs = [_torchvision(image.convert("RGB"), seed, 48) for seed in range(40)]
    assert all(x.shape == (3, 48, 48) and x.dtype == torch.uint8 for x in ours)
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs))                    # bit for bit
    assert min(_mad(a, b) for a, b in zip(ours, theirs[1:] + theirs[:1])) > 3     # another box or mirror
    flips = [crop.draw(Image.open(photo), seed).flip for seed in range(40)]
    assert 10 < sum(flips) < 30 and not any(CropFlip(48, SCALE, RATIO, hflip=False).draw(Image.open(photo), s).flip
                                            for s in range(40))


@pytest.mark.parametrize("path", ["device", "worker"])
def test_threads_in_process_give_the_batches_of_one_thread_and_of_worker_processes(tmp_path, path):
    write_imagefolder(tmp_path)
    _, samples = scan_split(tmp_path / "train")
    cfg = DataConfig(dataset="imagefolder", root=str(tmp_path), image_size=24, augment_on=path)
    # the worker path's transform draws its jitter and lighting from the global generator
    items = FolderCrops(samples, CropFlip.from_config(cfg, 24)) if path == "device" else FolderImages(samples, train_transform(cfg, 24))

    def epoch(workers: int, threads: int) -> list[torch.Tensor]:
        before = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            return [x for x, _ in LoaderBatches(items, 8, shuffle=True, seed=3, workers=workers).epoch(2)]
        finally:
            torch.set_num_threads(before)

    one, two, processes = epoch(0, 1), epoch(0, 2), epoch(1, 1)
    assert len(one) == 4 and all(torch.equal(a, b) and torch.equal(a, c) for a, b, c in zip(one, two, processes))
    assert not torch.equal(one[0], [x for x, _ in LoaderBatches(items, 8, shuffle=True, seed=4).epoch(2)][0])
    assert LoaderBatches(items, 8, workers=0)._threaded and not LoaderBatches(items, 8, workers=1)._threaded


def test_loading_threads_run_their_ops_on_one_intra_op_thread_and_leave_the_process_count():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pool = loader_pool(2)
        assert sorted(pool.map(lambda _: torch.get_num_threads(), range(6))) == [1] * 6
        fresh = []
        thread = threading.Thread(target=lambda: fresh.append(torch.get_num_threads()))
        thread.start()
        thread.join()
        assert torch.get_num_threads() == 2 and fresh == [2]   # the training thread's, and a new thread's
        pool.shutdown()
    finally:
        torch.set_num_threads(before)


def test_build_data_uses_crops_and_the_config(tmp_path):
    write_imagefolder(tmp_path)
    common = dict(dataset="imagefolder", root=str(tmp_path), global_batch_size=8, eval_batch_size=8, image_size=24,
                  augment_on="device")
    data = build_data(DataConfig(**common), seed=0)
    assert isinstance(data.train.dataset, FolderCrops) and data.val.dataset.threadsafe
    x, _ = next(data.train.epoch(0))
    assert x.shape == (8, 3, 24, 24) and x.dtype == torch.float32


def test_the_worker_count_is_not_part_of_a_runs_identity():
    """The same batches for any worker count (above): `workers` is an execution key."""
    folder = {"dataset": "imagenet", "augment_on": "device"}
    base = RunConfig.model_validate({"data": folder})
    assert RunConfig.model_validate({}).data.workers == "auto"
    assert {RunConfig.model_validate({"data": {**folder, "workers": n}}).config_hash() for n in (0, 4, 8, "auto")} == {base.config_hash()}


def test_workers_auto_none_on_a_cpu_and_the_spare_cores_of_a_gpu_rank(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda", 0)
    assert runtime.resolve_workers("auto", cpu, env={}) == 0 and runtime.resolve_workers(3, cpu, env={}) == 3
    monkeypatch.setattr(runtime, "available_cores", lambda env=None: 96)
    assert runtime.resolve_workers("auto", gpu, env={"LOCAL_WORLD_SIZE": "8"}) == 11    # 12 cores a rank, one trains
    assert runtime.resolve_workers("auto", gpu, env={}) == runtime.MAX_AUTO_WORKERS     # 95 spare, capped
    monkeypatch.setattr(runtime, "available_cores", lambda env=None: 2)
    assert runtime.resolve_workers("auto", gpu, env={"LOCAL_WORLD_SIZE": "2"}) == 1      # at least one
