"""The training engine: recipe settings reach the code they name; determinism; resume."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import bench.config.schema as schema_mod
import bench.engine as engine
import bench.engine.loop as loop_mod
import bench.engine.loss as loss_mod
import bench.engine.training as setup_mod
import bench.tricks.mixup as mixup_mod
from bench import runs
from bench.config import RunConfig
from bench.engine.data import build_data
from bench.engine.models import build_model
from bench.engine.step import Step, build_optimizer
from bench.runs import RunDir, files
from bench.tricks import distill_loss, smooth_targets, soft_cross_entropy, soft_target_entropy
from bench.tricks.mixup import Mixup


def with_(cfg: RunConfig, **sections) -> RunConfig:
    raw = cfg.model_dump()
    for key, value in sections.items():
        raw[key] = value if not isinstance(value, dict) or raw.get(key) is None else {**raw[key], **value}
    return RunConfig.model_validate(raw)


class Spy:
    """Wraps a function, records its calls, and returns what it returns."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args, **kwargs):
        self.calls.append((args, kwargs))
        return self.fn(*args, **kwargs)


def test_training_loss_smooths_then_mixes(tiny_cfg):
    cfg = with_(tiny_cfg, label_smoothing={"eps": 0.3, "form": "uniform"})
    model = build_model(cfg.model, 10, 1).eval()
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    perm = torch.tensor([1, 0, 3, 2])
    loss = engine.training_loss(model, x, y, cfg, 10, mixing=Mixup(0.6, perm))
    mx, my = 0.6 * x + 0.4 * x[perm], (lambda t: 0.6 * t + 0.4 * t[perm])(smooth_targets(y, 10, 0.3, "uniform"))
    assert loss.item() == pytest.approx(soft_cross_entropy(model(mx), my).item(), rel=1e-5)


def test_training_loss_adds_the_distillation_term(tiny_cfg):
    cfg = with_(tiny_cfg, distill={"teacher": "t", "temperature": 4.0})
    model, teacher = build_model(cfg.model, 10, 1).eval(), build_model(cfg.model, 10, 1).eval()
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    loss = engine.training_loss(model, x, y, cfg, 10, teacher=teacher)
    z = model(x)
    expected = F.cross_entropy(z, y) + distill_loss(z, teacher(x), 4.0)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    gluon = with_(cfg, distill={"hard_weight": 0.5})
    half = engine.training_loss(model, x, y, gluon, 10, teacher=teacher)
    assert half.item() == pytest.approx(0.5 * expected.item(), rel=1e-5)


def test_every_setting_reaches_the_code_it_names(tiny_cfg, tmp_path, monkeypatch):
    cfg = with_(tiny_cfg, label_smoothing={"eps": 0.2, "form": "uniform"}, mixup={"alpha": 0.3},
                optim={"momentum": 0.8, "nesterov": False, "weight_decay": 5e-4},
                efficient={"precision": "bf16"})
    homes = {"smooth_targets": loss_mod, "sample_mixing": mixup_mod, "lr_at": schema_mod}
    spies = {name: Spy(getattr(home, name)) for name, home in homes.items()}
    for name, spy in spies.items():
        monkeypatch.setattr(homes[name], name, spy)
    seen = {}
    real_step = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        seen.setdefault("groups", [(g["lr"], g["weight_decay"], g["momentum"], g["nesterov"]) for g in self.param_groups])
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    dtypes = []
    real_loss = loss_mod.soft_cross_entropy
    monkeypatch.setattr(loss_mod, "soft_cross_entropy", lambda z, t: (dtypes.append(z.dtype), real_loss(z, t))[1])
    engine.train(cfg, tmp_path, progress=False)

    args, _ = spies["smooth_targets"].calls[0]
    assert args[2:] == (0.2, "uniform")
    assert spies["sample_mixing"].calls[0][0][1] == 0.3
    lr_kwargs = spies["lr_at"].calls[0][1]
    assert lr_kwargs["peak_lr"] == pytest.approx(0.4 * 64 / 256) and lr_kwargs["kind"] == "step"
    assert lr_kwargs["warmup_steps"] == 3 and lr_kwargs["milestones"] == [6] and lr_kwargs["total_steps"] == 9
    (lr, wd, momentum, nesterov), (_, wd0, _, _) = seen["groups"]
    assert lr == pytest.approx(0.1 / 3) and wd == 5e-4 and wd0 == 0.0 and momentum == 0.8 and nesterov is False
    assert dtypes[0] == torch.bfloat16


def test_zero_gamma_and_no_bias_decay_follow_the_recipe(tiny_cfg):
    on = build_model(tiny_cfg.model, 10, 1, zero_gamma=True)
    off = build_model(tiny_cfg.model, 10, 1, zero_gamma=False)
    assert torch.count_nonzero(on.layer1[0].bn2.weight) == 0
    assert torch.all(off.layer1[0].bn2.weight == 1)


def test_mixup_switches_off_for_the_last_epochs(tiny_cfg, tmp_path, monkeypatch):
    spy = Spy(mixup_mod.sample_mixing)
    monkeypatch.setattr(mixup_mod, "sample_mixing", spy)
    engine.train(with_(tiny_cfg, mixup={"alpha": 0.2, "off_epochs": 1}), tmp_path, progress=False)
    assert len(spy.calls) == 2 * 3  # 3 epochs of 3 batches, the last without mixing


def test_same_seed_same_numbers_and_different_seed_differs(tiny_cfg, tmp_path):
    a = engine.train(tiny_cfg, tmp_path / "a", progress=False)
    b = engine.train(tiny_cfg, tmp_path / "b", progress=False)
    c = engine.train(with_(tiny_cfg, seed=1), tmp_path / "c", progress=False)
    untimed = lambda d: [{k: v for k, v in r.items() if "_s" not in k} for r in RunDir(d).read_metrics()]
    assert untimed(tmp_path / "a") == untimed(tmp_path / "b")
    assert a["top1"] == b["top1"] and a["val_loss"] == b["val_loss"]
    assert c["val_loss"] != a["val_loss"]


def test_metrics_rows_have_units_and_one_row_per_epoch(tiny_cfg, tmp_path):
    engine.train(tiny_cfg, tmp_path, progress=False)
    rows = RunDir(tmp_path).read_metrics()
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    assert set(rows[0]) >= {"train_loss", "lr", "val_top1", "val_top5", "images_per_s", "epoch_time_s"}
    assert all(0 <= r["val_top1"] <= r["val_top5"] <= 100 for r in rows)


class Stop(Exception):
    pass


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_resume_after_an_interruption_gives_the_same_weights(tiny_cfg, tmp_path, monkeypatch, compiled):
    cfg = with_(tiny_cfg, mixup={"alpha": 0.2}, label_smoothing={"eps": 0.1})
    if compiled:   # torch.compile (recipes/fashion-mnist-table6-32ep.yaml): the same exact resume
        cfg = cfg.model_copy(update={"runtime": cfg.runtime.model_copy(update={"compile": True})})
    full = engine.train(cfg, tmp_path / "full", progress=False)

    real_save = files.save_torch
    def save_then_stop(path, obj):
        real_save(path, obj)
        if path.name == RunDir.CHECKPOINT and obj["epoch"] == 0:
            raise Stop  # killed right after the first epoch's checkpoint
    monkeypatch.setattr(files, "save_torch", save_then_stop)
    with pytest.raises(Stop):
        engine.train(cfg, tmp_path / "cut", progress=False)
    monkeypatch.setattr(files, "save_torch", real_save)
    resumed = engine.train(cfg, tmp_path / "cut", progress=False)

    assert resumed["val_loss"] == full["val_loss"] and resumed["top1"] == full["top1"]
    a = runs.load_torch(tmp_path / "full" / RunDir.WEIGHTS)
    b = runs.load_torch(tmp_path / "cut" / RunDir.WEIGHTS)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert [r["epoch"] for r in RunDir(tmp_path / "cut").read_metrics()] == [0, 1, 2]


def test_digits_split_is_deterministic_and_disjoint(tiny_cfg):
    d1, d2 = build_data(tiny_cfg.data, seed=0), build_data(tiny_cfg.data, seed=7)
    assert torch.equal(d1.val.labels, d2.val.labels)
    assert len(d1.train.labels) + len(d1.val.labels) == 1797
    assert torch.bincount(d1.val.labels).min() >= 30  # stratified: every class in val
    first = [y for _, y in d1.train.epoch(0)]
    again = [y for _, y in d1.train.epoch(0)]
    other = [y for _, y in d1.train.epoch(1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert not torch.equal(first[0], other[0])


def test_final_weights_load_as_a_teacher(tiny_cfg, tmp_path):
    engine.train(tiny_cfg, tmp_path, progress=False)
    teacher = setup_mod.load_teacher(tiny_cfg, tmp_path / RunDir.WEIGHTS, 10, 1, torch.device("cpu"))
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())


def test_distillation_parts_for_display_leave_the_loss_bit_identical(tiny_cfg):
    """The progress bar's `hard` and `kd_kl` come out of the same call; the optimized loss (and so
    metrics.jsonl's train_loss) is the same tensor, bit for bit, as without them."""
    cfg = with_(tiny_cfg, distill={"teacher": "t", "temperature": 20.0})
    model, teacher = build_model(cfg.model, 10, 1).eval(), build_model(cfg.model, 10, 1).eval()
    x, y = torch.randn(4, 1, 8, 8), torch.tensor([0, 1, 2, 3])
    terms = {}
    loss = engine.training_loss(model, x, y, cfg, 10, teacher=teacher, terms=terms)
    assert torch.equal(loss, engine.training_loss(model, x, y, cfg, 10, teacher=teacher))
    entropy = float(soft_target_entropy(teacher(x).detach(), 20.0))
    assert entropy == pytest.approx(400 * math.log(10), rel=0.01)     # the constant that alarmed users
    assert float(terms["hard"]) + float(terms["kd_kl"]) + entropy == pytest.approx(loss.item(), rel=1e-5)
    assert 0 <= float(terms["kd_kl"]) < 0.05 * entropy
    same = {}
    engine.training_loss(model, x, y, cfg, 10, teacher=model, terms=same)
    assert float(same["kd_kl"]) == pytest.approx(0.0, abs=1e-4)        # the student agrees with its teacher


def test_progress_bar_shows_distillation_as_hard_and_kl_parts():
    row = {"train_loss": 921.5, "val_top1": 97.25}
    parts = {"hard": torch.tensor(2.0 * 8), "kd_kl": torch.tensor(0.5 * 8)}
    shown = loop_mod.progress_postfix(2, row, loop_mod.EpochStats(torch.tensor(921.5 * 8), 8, 0.1, 1.0, parts))
    assert shown == {"epoch": "3", "hard": "2.000", "kd_kl": "0.500", "top1": "97.2"}
    plain = loop_mod.progress_postfix(0, {"train_loss": 1.25, "val_top1": 50.0},
                                      loop_mod.EpochStats(torch.tensor(10.0), 8, 0.1, 1.0))
    assert plain == {"epoch": "1", "loss": "1.250", "top1": "50.0"}


def test_a_distillation_epoch_sums_the_parts_and_logs_the_optimized_loss(tiny_cfg):
    cfg = with_(tiny_cfg, distill={"teacher": "t", "temperature": 20.0})
    t = setup_mod.setup(cfg, (tiny_cfg, None))
    stats = engine.train_epoch(t, 0)
    assert set(stats.terms_sum) == {"hard", "kd_kl"}
    mean_loss = float(stats.loss_sum) / stats.images
    assert mean_loss > 100 and float(stats.terms_sum["kd_kl"]) / stats.images < 10   # T² × entropy is in the loss only


def test_fp16_on_cpu_skips_overflowed_steps_and_keeps_finite_weights(tiny_cfg):
    """The gradient scaler starts at 2^16, so the first steps' scaled gradients overflow and must
    be skipped; the fused CPU SGD kernel applied them (inf weights), the foreach path does not."""
    cfg = tiny_cfg.model_copy(update={"efficient": tiny_cfg.efficient.model_copy(update={"precision": "fp16"})})
    model = build_model(cfg.model, 10, 1, zero_gamma=True)
    device = torch.device("cpu")
    optimizer = build_optimizer(model, cfg, device)
    assert not optimizer.defaults.get("fused")
    scaler = torch.amp.GradScaler("cpu", enabled=True)
    g = torch.Generator().manual_seed(0)
    for _ in range(8):
        images, labels = torch.randn(16, 1, 8, 8, generator=g), torch.randint(0, 10, (16,), generator=g)
        loss = Step(model, optimizer, scaler, cfg, 10, device)(images, labels, 0.1)
        assert torch.isfinite(loss)
        assert all(torch.isfinite(p).all() for p in model.parameters())
    fp32 = cfg.model_copy(update={"efficient": cfg.efficient.model_copy(update={"precision": "bf16"})})
    assert build_optimizer(model, fp32, device).defaults.get("fused")   # unscaled runs keep the fused kernel
