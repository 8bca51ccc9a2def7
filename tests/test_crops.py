"""The workers' crop and flip: `CropFlip` draws the Inception crop's boxes, as torchvision's
RandomResizedCrop does, from each item's own generator and cuts them with torchvision's resize;
in-process loading on threads gives the batches of one thread and of worker processes, on both
paths; and `data.workers: auto`."""
from __future__ import annotations

import math
import threading

import pytest
import torch
from torchvision.transforms import v2

import bench.engine.runtime as runtime
from bench.config import DataConfig, RunConfig
from bench.engine.data import build_data, train_set
from bench.engine.data.crops import CropFlip, FolderCrops, random_resized_box
from bench.engine.data.fake import write_imagefolder
from bench.engine.data.images import LoaderBatches, loader_pool, read_image, scan_split
from bench.perf.loader import write_photo_tree

SCALE, RATIO = (0.08, 1.0), (3 / 4, 4 / 3)


def _mad(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float() - b.float()).abs().mean().item()


@pytest.fixture(scope="module")
def photo(tmp_path_factory) -> str:
    root = write_photo_tree(tmp_path_factory.mktemp("photo"), images=1, classes=1, size=(320, 240))
    return str(next(root.glob("train/*/*.JPEG")))


def test_each_item_cuts_its_own_box_and_flip_with_torchvisions_resize(photo):
    crop = CropFlip(48, SCALE, RATIO)
    image = read_image(photo)
    ours = [crop.from_file(photo, seed) for seed in range(40)]
    assert all(x.shape == (3, 48, 48) and x.dtype == torch.uint8 for x in ours)
    assert all(torch.equal(a, crop.from_file(photo, seed)) for seed, a in enumerate(ours))   # the item's seed decides
    assert min(_mad(a, b) for a, b in zip(ours, ours[1:] + ours[:1])) > 3                    # another box or mirror
    for seed in range(5):
        box = crop.draw(image, seed)
        cut = v2.functional.resized_crop(image, box.top, box.left, box.height, box.width, [48, 48], antialias=True)
        assert torch.equal(ours[seed], cut.flip(-1) if box.flip else cut)
    flips = [crop.draw(image, seed).flip for seed in range(400)]
    assert 160 < sum(flips) < 240 and not any(CropFlip(48, SCALE, RATIO, hflip=False).draw(image, s).flip for s in range(40))


def test_the_boxes_follow_torchvisions_random_resized_crop():
    """The same distribution of area fractions and aspect ratios as torchvision's sampler (global
    generator), within its bounds, with the largest centred box where no draw fits."""
    image, n = torch.zeros(3, 240, 320, dtype=torch.uint8), 2000
    ours = [random_resized_box(240, 320, SCALE, RATIO, torch.Generator().manual_seed(s)) for s in range(n)]
    torch.manual_seed(0)
    sampler = v2.RandomResizedCrop(48, scale=SCALE, ratio=RATIO)
    theirs = [(p["top"], p["left"], p["height"], p["width"]) for p in (sampler.make_params([image]) for _ in range(n))]
    for boxes in (ours, theirs):
        assert all(0 <= t and 0 <= left and t + h <= 240 and left + w <= 320 for t, left, h, w in boxes)
    area = [torch.tensor([h * w / (240 * 320) for _, _, h, w in boxes]) for boxes in (ours, theirs)]
    aspect = [torch.tensor([math.log(w / h) for _, _, h, w in boxes]) for boxes in (ours, theirs)]
    assert abs(area[0].mean() - area[1].mean()) < 0.02 and abs(area[0].median() - area[1].median()) < 0.03
    assert abs(aspect[0].mean() - aspect[1].mean()) < 0.02 and abs(aspect[0].std() - aspect[1].std()) < 0.02
    assert 0.075 < area[0].min() and area[0].max() <= 1.0
    tall = random_resized_box(400, 40, (0.99, 1.0), RATIO, torch.Generator().manual_seed(0))   # no draw fits
    assert tall == (200 - 27, 0, 53, 40)   # centred, 40 wide at the ratio 3/4


@pytest.mark.parametrize("path", ["device", "worker"])
def test_threads_in_process_give_the_batches_of_one_thread_and_of_worker_processes(tmp_path, path):
    write_imagefolder(tmp_path)
    _, samples = scan_split(tmp_path / "train")
    cfg = DataConfig(dataset="imagefolder", root=str(tmp_path), image_size=24, augment_on=path)
    items = train_set(cfg, samples, 24, torch.device("cpu"))["dataset"]   # the worker path: jitter and lighting too

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
