"""Each trick against its paper formula, at edge values."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bench.tricks import (
    Mixup,
    combine_distill,
    distill_loss,
    lr_at,
    param_groups,
    sample_mixing,
    smooth_targets,
    soft_cross_entropy,
    zero_gamma,
)

# ---- learning-rate schedule -------------------------------------------------------------------

SCHED = dict(peak_lr=0.4, total_steps=1000, warmup_steps=100)


def test_warmup_is_linear_from_zero_to_peak():
    assert lr_at(0, **SCHED) == pytest.approx(0.4 / 100)
    assert lr_at(49, **SCHED) == pytest.approx(0.4 * 50 / 100)
    assert lr_at(99, **SCHED) == pytest.approx(0.4)          # end of warmup reaches the peak


def test_cosine_after_warmup_follows_eq5():
    assert lr_at(100, **SCHED) == pytest.approx(0.4)          # t = 0
    assert lr_at(550, **SCHED) == pytest.approx(0.2)          # t = T/2: half the peak
    t, T = 325, 900
    assert lr_at(100 + t, **SCHED) == pytest.approx(0.5 * (1 + math.cos(math.pi * t / T)) * 0.4)
    assert lr_at(1000, **SCHED) == pytest.approx(0.0, abs=1e-12)  # reaches 0 at the end
    assert lr_at(999, **SCHED) > 0


def test_cosine_without_warmup_starts_at_peak():
    assert lr_at(0, peak_lr=0.1, total_steps=10, warmup_steps=0) == pytest.approx(0.1)


def test_step_decay_at_milestones():
    kw = dict(SCHED, kind="step", milestones=(300, 600, 900))
    assert lr_at(299, **kw) == pytest.approx(0.4)
    assert lr_at(300, **kw) == pytest.approx(0.04)
    assert lr_at(600, **kw) == pytest.approx(0.004)
    assert lr_at(999, **kw) == pytest.approx(0.0004)
    assert lr_at(300, **dict(kw, gamma=0.5)) == pytest.approx(0.2)


def test_schedule_rejects_bad_kind_and_warmup():
    with pytest.raises(ValueError, match="kind"):
        lr_at(0, peak_lr=0.1, total_steps=10, kind="linear")
    with pytest.raises(ValueError, match="warmup_steps"):
        lr_at(0, peak_lr=0.1, total_steps=10, warmup_steps=11)


# ---- label smoothing ---------------------------------------------------------------------------

def test_eps_zero_is_one_hot_in_both_forms():
    labels = torch.tensor([0, 3, 9])
    for form in ("paper", "uniform"):
        assert torch.equal(smooth_targets(labels, 10, 0.0, form), F.one_hot(labels, 10).float())


def test_paper_form_puts_eps_over_k_minus_one():
    q = smooth_targets(torch.tensor([2]), 5, 0.1, "paper")[0]
    assert q[2] == pytest.approx(0.9)
    assert q[0] == pytest.approx(0.1 / 4)
    assert q.sum() == pytest.approx(1.0)


def test_uniform_form_matches_pytorch_label_smoothing():
    logits, labels = torch.randn(6, 7), torch.randint(0, 7, (6,))
    q = smooth_targets(labels, 7, 0.2, "uniform")
    assert q[0, labels[0]] == pytest.approx(1 - 0.2 + 0.2 / 7)
    assert soft_cross_entropy(logits, q) == pytest.approx(float(F.cross_entropy(logits, labels, label_smoothing=0.2)), rel=1e-5)


def test_paper_form_equals_uniform_form_with_scaled_eps():
    labels, k, eps = torch.tensor([1, 4]), 5, 0.1
    assert torch.allclose(smooth_targets(labels, k, eps, "paper"), smooth_targets(labels, k, eps * k / (k - 1), "uniform"))


def test_smoothing_rejects_unknown_form():
    with pytest.raises(ValueError, match="form"):
        smooth_targets(torch.tensor([0]), 3, 0.1, "other")


# ---- mixup -------------------------------------------------------------------------------------

def test_lambda_one_leaves_the_batch_unchanged():
    x, y = torch.randn(4, 1, 2, 2), torch.eye(4)
    mx, my = Mixup(1.0, torch.tensor([3, 2, 1, 0])).apply(x, y)
    assert torch.equal(mx, x) and torch.equal(my, y)


def test_lambda_weights_the_original_sample():
    x, y = torch.arange(4.0).view(4, 1, 1, 1), torch.eye(4)
    perm = torch.tensor([1, 0, 3, 2])
    mx, my = Mixup(0.7, perm).apply(x, y)
    assert mx[0].item() == pytest.approx(0.7 * 0 + 0.3 * 1)
    assert my[0].tolist() == pytest.approx([0.7, 0.3, 0, 0])
    assert my.sum(1).tolist() == pytest.approx([1.0] * 4)


def test_sample_mixing_is_seeded_and_beta_distributed():
    a = [sample_mixing(8, 0.2, np.random.default_rng(5)) for _ in range(2)]
    assert a[0][0] == a[1][0] and torch.equal(a[0][1], a[1][1])
    assert sorted(a[0][1].tolist()) == list(range(8))
    rng = np.random.default_rng(0)
    lams = np.array([sample_mixing(2, 0.2, rng)[0] for _ in range(4000)])
    assert lams.mean() == pytest.approx(0.5, abs=0.03)                     # Beta(α, α) is symmetric
    assert lams.var() == pytest.approx(1 / (4 * (2 * 0.2 + 1)), rel=0.1)   # var = 1/(4(2α+1))


# ---- cross-entropy and distillation -------------------------------------------------------------

def test_soft_cross_entropy_with_one_hot_is_cross_entropy():
    logits, labels = torch.randn(5, 4), torch.randint(0, 4, (5,))
    assert soft_cross_entropy(logits, F.one_hot(labels, 4).float()) == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-6)


def test_distill_loss_at_t1_is_cross_entropy_to_teacher_softmax():
    z, r = torch.randn(3, 5), torch.randn(3, 5)
    expected = -(F.softmax(r, 1) * F.log_softmax(z, 1)).sum(1).mean()
    assert distill_loss(z, r, 1.0) == pytest.approx(float(expected), rel=1e-6)


def test_distill_loss_scales_by_t_squared():
    z, r, t = torch.randn(3, 5), torch.randn(3, 5), 20.0
    expected = t**2 * -(F.softmax(r / t, 1) * F.log_softmax(z / t, 1)).sum(1).mean()
    assert distill_loss(z, r, t) == pytest.approx(float(expected), rel=1e-6)


def test_distill_gradient_vanishes_when_student_equals_teacher():
    z = torch.randn(4, 6, requires_grad=True)
    distill_loss(z, z.detach().clone(), 3.0).backward()
    assert z.grad.abs().max() < 1e-6


def test_combine_distill_paper_and_gluoncv_conventions():
    hard, soft = torch.tensor(2.0), torch.tensor(10.0)
    assert combine_distill(hard, soft, None) == 12.0
    assert combine_distill(hard, soft, 0.5) == 6.0
    assert combine_distill(hard, soft, 1.0) == 2.0


# ---- efficient training ------------------------------------------------------------------------

def test_param_groups_exclude_biases_and_norm_parameters():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4, 2))
    decay, no_decay = param_groups(model, 1e-4, no_bias_decay=True)
    assert decay["weight_decay"] == 1e-4 and no_decay["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(model[0].weight), id(model[3].weight)}
    assert len(no_decay["params"]) == 4  # conv bias, BN γ and β, linear bias
    (everything,) = param_groups(model, 1e-4, no_bias_decay=False)
    assert len(everything["params"]) == 6 and everything["weight_decay"] == 1e-4


def test_zero_gamma_zeroes_the_last_bn_of_each_residual_block():
    import timm

    model = timm.create_model("resnet18d", num_classes=3, zero_init_last=False)
    assert zero_gamma(model) == 8
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in stage:
            assert torch.count_nonzero(block.bn2.weight) == 0
            assert torch.all(block.bn1.weight == 1)


# ---- CutMix (Yun et al. 2019, arXiv:1905.04899) -----------------------------------------------

def test_cutmix_box_has_the_area_1_minus_lambda_and_lambda_is_corrected_when_clipped():
    from bench.tricks.cutmix import box_lam, cutmix_box

    box = cutmix_box(0.75, 32, 32, cy=16, cx=16)            # √(1 − λ) = 1/2 of each side
    assert box == (8, 24, 8, 24) and box_lam(box, 32, 32) == pytest.approx(0.75)
    corner = cutmix_box(0.75, 32, 32, cy=0, cx=0)          # clipped to a quarter of the box
    assert corner == (0, 8, 0, 8) and box_lam(corner, 32, 32) == pytest.approx(1 - 64 / 1024)
    assert box_lam(cutmix_box(1.0, 32, 32, 5, 7), 32, 32) == 1.0   # λ = 1: nothing pasted
    assert box_lam(cutmix_box(0.0, 32, 32, 16, 16), 32, 32) == 0.0  # λ = 0: the whole partner


def test_cutmix_pastes_the_partners_box_and_mixes_targets_by_area():
    from bench.tricks.cutmix import CutMix

    images = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    targets = F.one_hot(torch.tensor([0, 1]), 2).float()
    perm = torch.tensor([1, 0])
    mixed, mixed_targets = CutMix(0.75, perm, (0, 2, 0, 2)).apply(images, targets)
    assert torch.equal(mixed[0, :, :2, :2], images[1, :, :2, :2])      # the box comes from the partner
    outside = torch.ones(4, 4, dtype=torch.bool)
    outside[:2, :2] = False
    assert torch.equal(mixed[0, 0][outside], images[0, 0][outside])    # the rest is the original
    assert torch.allclose(mixed_targets[0], torch.tensor([0.75, 0.25]))  # λ on the original
    unchanged, same = CutMix(1.0, perm, (0, 0, 0, 0)).apply(images, targets)
    assert torch.equal(unchanged, images) and torch.equal(same, targets)


def test_cutmix_samples_from_the_runs_generator_with_lambda_from_the_box():
    from bench.tricks.cutmix import CutMixConfig, box_lam

    cfg = CutMixConfig()
    assert cfg.alpha == 1.0                                  # the CutMix paper's α
    a, b = (cfg.sample(8, (32, 32), np.random.default_rng(3)) for _ in range(2))
    assert a.lam == b.lam and a.box == b.box and torch.equal(a.perm, b.perm)
    assert a.lam == box_lam(a.box, 32, 32) and sorted(a.perm.tolist()) == list(range(8))


def test_cutmix_from_a_recipe_reaches_the_loss(tiny_cfg, tmp_path, monkeypatch):
    import bench.engine as engine
    import bench.engine.step as step_mod
    from bench.config import RunConfig, tricks_on
    from bench.errors import ConfigError
    from bench.tricks.cutmix import CutMix

    cfg = RunConfig.model_validate({**tiny_cfg.model_dump(), "cutmix": {"alpha": 0.5, "off_epochs": 1}})
    assert "cutmix" in tricks_on(cfg) and cfg.mixing() is cfg.cutmix
    seen, real = [], step_mod.training_loss
    monkeypatch.setattr(step_mod, "training_loss", lambda *a, **k: (seen.append(a[5]), real(*a, **k))[1])
    engine.train(cfg, tmp_path, progress=False)
    assert all(isinstance(m, CutMix) for m in seen[:6]) and seen[6:] == [None] * 3   # off in the last epoch
    with pytest.raises(ConfigError, match="mixup and cutmix are both on"):
        from bench.config import validate
        validate(RunConfig, {**tiny_cfg.model_dump(), "cutmix": {}, "mixup": {}}, "recipe")
