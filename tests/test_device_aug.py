"""Photometric augmentation (`DeviceAugment`, batched on the device or per image in the workers):
the distributions of torchvision's per-image ColorJitter and AlexNet's lighting, the same draws on
any launch, and uint8 batches from the workers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from bench.config import DataConfig
from bench.engine.data import build_data
from bench.engine.data.device_aug import NORMALIZE, PCA_EIGVAL, PCA_EIGVEC, DeviceAugment, adjust_hue
from bench.engine.data.fake import write_fake_data
from bench.engine.data.images import eval_transform

CPU = torch.device("cpu")


def _photos(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """n smooth colour images (uint8), different enough to exercise every colour operation."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 3, 3, generator=g)
    return (torch.nn.functional.interpolate(coarse, size=size, mode="bilinear", align_corners=False) * 255).round().to(torch.uint8)


def _torchvision_photometric(cfg: DataConfig) -> v2.Compose:
    """The reference, per image from the global generator: torchvision's ColorJitter (hue shifted
    by U[−j/2, j/2] of the circle, MXNet's HueJitterAug(j)), AlexNet's PCA lighting, mean/std."""
    j = cfg.color_jitter
    basis = torch.tensor(PCA_EIGVEC) * torch.tensor(PCA_EIGVAL)
    lighting = lambda x: x + (basis @ (torch.randn(3) * cfg.lighting_std))[:, None, None]
    jitter = dict(hue=j / 2) if cfg.color_jitter_hue else dict(contrast=j)
    return v2.Compose([v2.ColorJitter(brightness=j, saturation=j, **jitter), v2.ToDtype(torch.float32, scale=True),
                       lighting, v2.Normalize(*NORMALIZE["imagenet"])])


def _stats(x: torch.Tensor) -> torch.Tensor:
    """Per channel: the mean and the quartiles of per-image means and stds over the batch."""
    means, stds = x.mean(dim=(2, 3)), x.std(dim=(2, 3))
    q = torch.tensor([0.25, 0.5, 0.75])
    return torch.cat([means.mean(0), torch.quantile(means, q, dim=0).flatten(), torch.quantile(stds, q, dim=0).flatten()])


@pytest.mark.parametrize("hue", [False, True], ids=["gluoncv", "paper-hue"])
def test_the_distributions_of_torchvisions_per_image_transforms(hue):
    cfg = DataConfig(dataset="imagenet", color_jitter_hue=hue)
    images = _photos(2).repeat(4096, 1, 1, 1)              # 4,096 draws of each of 2 photos
    worker = _torchvision_photometric(cfg)
    torch.manual_seed(0)
    per_image = torch.stack([worker(img) for img in images])
    batched = DeviceAugment(cfg, CPU)(images, seed=1)
    for k in range(2):   # photo by photo, the same spread of outcomes: within ~4 standard errors, plus
        # torchvision's uint8 rounding after each colour operation (about 0.02 here)
        a, b = _stats(per_image[k::2]), _stats(batched[k::2])
        assert torch.allclose(a, b, atol=0.06), (k, (a - b).abs().max())
    plain = DeviceAugment(DataConfig(dataset="imagenet", color_jitter=0.0, lighting_std=0.0), CPU)(images, seed=1)
    assert (batched - plain).abs().mean() > 0.1            # and the augmentation did something


def test_edge_values_normalise_only():
    images = _photos(8)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    expected = (images.float() / 255 - mean) / std
    none = DeviceAugment(DataConfig(dataset="imagenet", color_jitter=0.0, lighting_std=0.0), CPU)
    assert torch.allclose(none(images, seed=3), expected, atol=1e-6)
    evaluation = DeviceAugment(DataConfig(dataset="imagenet"), CPU, train=False)
    assert torch.allclose(evaluation(images, seed=3), expected, atol=1e-6)


def test_the_papers_normalisation_is_its_constants_on_0_to_255_pixels():
    """Section 2.1: subtract 123.68, 116.779, 103.939 and divide by 58.393, 57.12, 57.375, on pixels
    in [0, 255]; the same on the device and in the evaluation transform of the worker path."""
    images = _photos(8)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in ((123.68, 116.779, 103.939), (58.393, 57.12, 57.375)))
    expected = (images.float() - mean) / std
    cfg = DataConfig(dataset="imagenet", normalize="paper")
    assert torch.allclose(DeviceAugment(cfg, CPU, train=False)(images, seed=3), expected, atol=1e-5)
    worker = eval_transform(images.shape[-1], images.shape[-1], normalize="paper")
    assert torch.allclose(worker(images[0]), expected[0], atol=1e-5)
    imagenet = DeviceAugment(DataConfig(dataset="imagenet"), CPU, train=False)(images, seed=3)
    assert 0 < (imagenet - expected).abs().max() < 0.05     # 0.002 on the G and B means: a small change


def test_hue_rotation_matches_torchvision():
    x = _photos(6).float() / 255
    for shift in (0.0, 0.1, -0.25, 0.5):
        ours = adjust_hue(x, torch.full((6,), shift))
        assert torch.allclose(ours, TF.adjust_hue(x, shift), atol=2e-3), shift


def test_same_draws_on_any_launch_and_per_seed():
    aug = DeviceAugment(DataConfig(dataset="imagenet"), CPU)
    images = _photos(12)
    whole = aug(images, seed=7)
    shares = [aug(images[r::3], seed=7, rank=r, world_size=3) for r in range(3)]
    for r in range(3):
        assert torch.equal(shares[r], whole[r::3])
    assert torch.equal(aug(images, seed=7), whole) and not torch.allclose(aug(images, seed=8), whole)


def test_workers_send_uint8_and_the_batches_arrive_normalised(tmp_path):
    root = write_fake_data(tmp_path)["imagenet"]
    common = dict(dataset="imagefolder", root=str(root), global_batch_size=4, eval_batch_size=4, image_size=32,
                  eval_resize=36, workers=0, max_train_batches=2, max_val_batches=1)
    device, worker = (build_data(DataConfig(augment_on=a, **common), seed=0) for a in ("device", "worker"))
    image = torch.zeros(3, 40, 50, dtype=torch.uint8)   # a `read_image` tensor
    assert device.train.dataset.crop.from_tensor(image, seed=0).dtype == torch.uint8
    assert device.val.dataset.transform(image).dtype == torch.uint8
    (xd, yd), (xw, yw) = next(device.train.epoch(0)), next(worker.train.epoch(0))
    assert xd.dtype == xw.dtype == torch.float32 and xd.shape == xw.shape and torch.equal(yd, yw)
    assert abs(xd.mean() - xw.mean()) < 0.5 and not torch.equal(xd, xw)   # same crops, other colour draws
    (vd, _), (vw, _) = next(device.val.epoch(0)), next(worker.val.epoch(0))
    assert torch.allclose(vd, vw, atol=1e-5)               # evaluation: no randomness, the same pixels
    assert np.isfinite(xd.numpy()).all()


@pytest.mark.parametrize("hue", [False, True], ids=["gluoncv", "paper-hue"])
def test_one_image_gets_what_it_gets_in_a_batch(hue):
    """The worker path augments one image at a time (its own order, no gathering): the image of a
    global batch of 2 on rank 0 of 2 equals the first image of that batch on one process."""
    aug = DeviceAugment(DataConfig(dataset="imagenet", color_jitter_hue=hue), CPU)
    pair = _photos(2)
    for seed in range(6):
        assert torch.allclose(aug(pair[:1], seed, rank=0, world_size=2), aug(pair, seed)[:1], atol=1e-6)
