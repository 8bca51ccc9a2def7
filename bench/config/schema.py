"""The run config: strict, frozen sections, one per part of training; a trick set to None is off."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any, ClassVar, Literal, Optional, Union

from pydantic import Field, NonNegativeInt, PositiveInt, model_validator

from bench.strict import Strict
from bench.tricks import DistillConfig, EfficientConfig, LabelSmoothingConfig, MixingConfig, MixupConfig, lr_at
from bench.tricks.cutmix import CutMixConfig


class ModelConfig(Strict):
    name: str = "resnet18d"            # a timm model name, or resnet50_v1 (bench.models.LOCAL_MODELS)
    small_input: bool = False          # stride-1 stem and no max-pool, for 8-32 px images
    kwargs: dict[str, Any] = {}        # passed to timm.create_model (e.g. channels, stem_width)
    pretrained: Optional[str] = None   # a timm pretrained tag (e.g. resnet152d.ra2_in1k), for teachers
    checkpoint: Optional[str] = None   # a file of weights (a state dict, a run's model.pt, a timm train.py
    #                                    checkpoint, a .safetensors file), for teachers
    checkpoint_key: Optional[str] = None   # the checkpoint's entry to load (e.g. state_dict_ema); None: "model",
    #                                        else "state_dict", else the file's own dict

    @model_validator(mode="after")
    def _key_needs_a_file(self) -> ModelConfig:
        if self.checkpoint_key is not None and self.checkpoint is None:
            raise ValueError(f"model.checkpoint_key={self.checkpoint_key!r} needs model.checkpoint (the file it is an entry of)")
        return self


# the data set whose root is its data; any other is named, and its root only says where the files
# lie (a node-local copy, another mount), so a run keeps its identity when they move
FOLDER_DATASETS = frozenset({"imagefolder"})


class DataConfig(Strict):
    dataset: Literal["digits", "imagenet", "imagefolder", "cifar10", "cifar100", "fashion_mnist"] = "digits"
    root: Optional[str] = None                  # None: the data set's default places (bench/data.py)
    download: bool = False                      # cifar10/100, fashion_mnist: fetch when absent
    global_batch_size: int = Field(128, gt=0)   # summed over all devices
    eval_batch_size: int = Field(512, gt=0)
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)   # digits only: the others have a val split
    max_train_batches: Optional[int] = Field(None, gt=0)  # per epoch; None = the whole set
    max_val_batches: Optional[int] = Field(None, gt=0)
    image_size: Optional[int] = Field(None, ge=8)   # train and eval crop; None: 224 / 32 / 28 / 8
    eval_resize: Optional[int] = Field(None, ge=8)  # eval: shorter side, then center crop; None: size / 0.875
    # DataLoader processes per device (ImageFolder); auto: on a GPU the cores per local rank less
    # one (at most 16), on a CPU 0: the training process reads the items on its threads between steps
    workers: Union[Literal["auto"], NonNegativeInt] = "auto"
    pin_memory: bool = True
    # worker: workers decode, crop, flip, jitter, add lighting noise and normalise, sending float32;
    # device: workers decode, crop and flip and send uint8, the rest runs batched on the device
    augment_on: Literal["worker", "device"] = "worker"
    # worker: workers decode the JPEGs (PIL); device: workers only read the files' bytes, the
    # device decodes each batch (nvJPEG on CUDA), then crops and flips (needs augment_on: device)
    decode_on: Literal["worker", "device"] = "worker"
    # augment_on: device, JPEGs: decode at 1/2, 1/4 or 1/8 scale where the crop box spans at least
    # twice the output size (libjpeg's DCT scaling): the same boxes, pixels within about a level
    decode_reduced: bool = False
    crop_scale: tuple[float, float] = (0.08, 1.0)     # random resized crop: area fraction
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)   # and aspect ratio
    color_jitter: float = Field(0.4, ge=0.0, lt=1.0)  # brightness, contrast, saturation × U[1−j, 1+j]
    # False: brightness, contrast, saturation (GluonCV's train_imagenet.py); True: brightness,
    # saturation and hue, the paper's words (Section 2.1), hue rotated by U[−jπ, jπ] as MXNet's HueJitterAug
    color_jitter_hue: bool = False
    lighting_std: float = Field(0.1, ge=0.0)          # PCA lighting noise (AlexNet), std of the coefficients
    pad_px: int = Field(4, ge=0)                # CIFAR / Fashion-MNIST: pad, then a random crop
    hflip: bool = True                          # random horizontal flip (not for digits)
    # cifar10/100, fashion_mnist: validate on this many training images, held out (stratified, the
    # same split for every seed), and train on the rest; the test split is not read. For a pilot.
    holdout: Optional[int] = Field(None, gt=0)

    @model_validator(mode="after")
    def _decode_needs_device_augment(self) -> DataConfig:
        if self.decode_on == "device" and self.augment_on != "device":
            raise ValueError(f"decode_on=device needs augment_on=device (not {self.augment_on}): "
                             "images decoded on the device are augmented there")
        if self.decode_reduced and (self.augment_on != "device" or self.decode_on == "device"):
            raise ValueError(f"decode_reduced=true is for augment_on=device with decode_on=worker (not "
                             f"augment_on={self.augment_on}, decode_on={self.decode_on}): only the workers' crop and flip decode at a reduced scale")
        if self.holdout is not None and self.dataset not in ("cifar10", "cifar100", "fashion_mnist"):
            raise ValueError(f"holdout={self.holdout} is for cifar10, cifar100 and fashion_mnist (not {self.dataset}): "
                             "digits hold out val_fraction, ImageFolder trees have their own val split")
        return self

    def smoke(self) -> DataConfig:
        """3 training and 2 validation batches; for photographs also batches of at most 8 images
        of a quarter of the size (at least 32 px, and 75 px for Inception-V3's 299)."""
        update: dict[str, Any] = {"max_train_batches": 3, "max_val_batches": 2}
        if self.dataset in ("imagenet", "imagefolder"):
            size = self.image_size or 224
            update.update(global_batch_size=min(self.global_batch_size, 8), eval_batch_size=min(self.eval_batch_size, 8),
                          image_size=max(32, -(-size // 4)), eval_resize=max(32, -(-(self.eval_resize or round(size / 0.875)) // 4)),
                          workers=0)
        elif self.dataset != "digits":
            update.update(global_batch_size=min(self.global_batch_size, 16), eval_batch_size=min(self.eval_batch_size, 16))
        return self.model_copy(update=update)


class OptimConfig(Strict):
    name: Literal["sgd"] = "sgd"
    lr_per_256: float = Field(0.1, gt=0.0)      # peak lr = lr_per_256 × global_batch_size / 256
    momentum: float = Field(0.9, ge=0.0, lt=1.0)
    nesterov: bool = True
    weight_decay: float = Field(1e-4, ge=0.0)


class ScheduleConfig(Strict):
    kind: Literal["step", "cosine"] = "step"
    epochs: int = Field(120, gt=0)
    warmup_epochs: int = Field(0, ge=0)
    milestones: list[int] = []                  # epochs at which "step" multiplies the lr by gamma
    gamma: float = Field(0.1, gt=0.0, le=1.0)

    def tags(self) -> list[str]:
        """The refinements switched on, as run tags."""
        return (["warmup"] if self.warmup_epochs > 0 else []) + (["cosine"] if self.kind == "cosine" else [])


class RuntimeConfig(Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    channels_last: bool = True
    # True: deterministic kernels (bit-exact resume); auto: deterministic on CPU, cuDNN autotuning
    # on CUDA (the ImageNet recipes, where it buys speed and determinism buys nothing at that scale)
    deterministic: Union[bool, Literal["auto"]] = True
    compile: bool = False              # torch.compile the model (in place); opt-in, measured both ways
    sync_bn: bool = False              # SyncBatchNorm across ranks under DDP (CUDA only)
    # intra-op CPU threads of each process; auto: the cores this process may use (affinity,
    # SLURM_CPUS_PER_TASK) shared among the local ranks, less one per loader worker
    threads: Union[Literal["auto"], PositiveInt] = "auto"
    # the NaN/inf loss guard, a stop request (SLURM's signal) and a checkpoint falling due are
    # looked at every this many batches, one device sync each, and at every epoch's end
    nan_check_steps: PositiveInt = 50
    # a checkpoint within an epoch (data position and RNG included) every this many minutes, at
    # the first check after it falls due; None or 0: at epoch ends only
    checkpoint_every_min: Optional[float] = Field(10.0, ge=0.0)


class RunConfig(Strict):
    """Everything one training run needs; a trick section set to None is off."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    efficient: EfficientConfig = EfficientConfig()
    label_smoothing: Optional[LabelSmoothingConfig] = None
    mixup: Optional[MixupConfig] = None
    cutmix: Optional[CutMixConfig] = None      # not in the paper: Yun et al. 2019, a batch-mixing trick like mixup
    distill: Optional[DistillConfig] = None
    runtime: RuntimeConfig = RuntimeConfig()
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> RunConfig:
        s = self.schedule
        if s.warmup_epochs > s.epochs:
            raise ValueError(f"schedule.warmup_epochs={s.warmup_epochs} exceeds schedule.epochs={s.epochs}")
        if list(s.milestones) != sorted(set(s.milestones)) or any(not 0 < m <= s.epochs for m in s.milestones):
            raise ValueError(f"schedule.milestones={s.milestones} must be increasing epochs in (0, {s.epochs}]")
        ghost = self.efficient.bn_batch_size
        if ghost is not None and self.runtime.sync_bn:
            raise ValueError(f"efficient.bn_batch_size={ghost} with runtime.sync_bn=true: choose one way to take BatchNorm statistics")
        if ghost is not None and self.data.global_batch_size % ghost:
            raise ValueError(f"efficient.bn_batch_size={ghost} does not divide data.global_batch_size={self.data.global_batch_size}")
        mixers = [name for name in type(self).model_fields if isinstance(getattr(self, name), MixingConfig)]
        if len(mixers) > 1:
            raise ValueError(f"{' and '.join(mixers)} are both on; a run mixes its batches one way")
        for name in mixers:
            if getattr(self, name).off_epochs >= s.epochs:
                raise ValueError(f"{name}.off_epochs={getattr(self, name).off_epochs} leaves no mixed epoch of {s.epochs}")
        return self

    def mixing(self) -> Optional[MixingConfig]:
        """The batch-mixing trick that is on (mixup, CutMix, ...), if any."""
        return next((v for v in (getattr(self, n) for n in type(self).model_fields) if isinstance(v, MixingConfig)), None)

    def peak_lr(self) -> float:
        return self.optim.lr_per_256 * self.data.global_batch_size / 256

    # The paper's trick sections have always been hashed, as null when off; a section added since
    # stays out of the hash while it is off, and so does a key added since while it has its
    # default: adding a trick or a setting keeps every recorded run's hash. A key whose default
    # changed hashes as its old default while it holds the new one.
    hashed_when_off: ClassVar[frozenset[str]] = frozenset({"label_smoothing", "mixup", "distill"})
    added_keys: ClassVar[tuple[tuple[str, str], ...]] = (("efficient", "bn_batch_size"), ("runtime", "threads"),
                                                       ("model", "checkpoint_key"),
                                                       ("data", "color_jitter_hue"), ("data", "augment_on"), ("data", "decode_on"),
                                                       ("runtime", "nan_check_steps"), ("runtime", "checkpoint_every_min"),
                                                       ("data", "holdout"), ("data", "decode_reduced"))
    changed_defaults: ClassVar[dict[tuple[str, str], Any]] = {("data", "workers"): 8}   # before "auto"

    def config_hash(self) -> str:
        off = {n for n in type(self).model_fields if getattr(self, n) is None and n not in self.hashed_when_off}
        dumped = self.model_dump(mode="json", exclude=off)
        if self.data.dataset not in FOLDER_DATASETS:   # where a named data set's files lie is not which run it is
            dumped["data"]["root"] = None
        for (section, key), old in self.changed_defaults.items():
            if dumped[section][key] == type(getattr(self, section)).model_fields[key].default:
                dumped[section][key] = old
        for section, key in self.added_keys:
            default = type(getattr(self, section)).model_fields[key].default
            if dumped[section][key] == default:
                del dumped[section][key]
        blob = json.dumps(dumped, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


def schedule_for(cfg: RunConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning rate as a pure function of the global step, from the run's schedule, peak lr
    and iterations per epoch: the one schedule the loop, the figures and the benchmark use."""
    s = cfg.schedule
    args = dict(peak_lr=cfg.peak_lr(), total_steps=s.epochs * steps_per_epoch, kind=s.kind,
                warmup_steps=s.warmup_epochs * steps_per_epoch, gamma=s.gamma,
                milestones=[m * steps_per_epoch for m in s.milestones])
    return lambda step: lr_at(step, **args)


def tricks_on(cfg: RunConfig) -> list[str]:
    """The refinements a run has on (its W&B tags): each section's own `tags()`, and the name of
    every optional trick section that is set."""
    tags: list[str] = []
    for name, field in type(cfg).model_fields.items():
        value = getattr(cfg, name)
        if hasattr(value, "tags"):
            tags += value.tags()
        elif value is not None and isinstance(value, Strict) and field.default is None:
            tags.append(name)
    return tags


class WandbConfig(Strict):
    """A recipe's `wandb:` section; its presence (or `--wandb`) switches logging on."""

    project: Optional[str] = None      # None: $WANDB_PROJECT, else "bench"
    entity: Optional[str] = None       # None: $WANDB_ENTITY, else the API key's default entity
    group: Optional[str] = None        # None: the results directory's name (the ablation)
    mode: Optional[Literal["online", "offline", "disabled"]] = None  # None: $WANDB_MODE, else online
    #                                    when an API key is known and the server answers, else offline
    log_every_steps: int = Field(1, gt=0)   # per-iteration lr and loss every this many batches
    log_model: bool = True             # each finished run's model.pt as a W&B model artifact (lineage)
