"""The run config: strict, frozen sections, one per part of training; a trick set to None is off."""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import Field, NonNegativeInt, field_validator, model_validator

from bench.config.datasets import DATASETS, EVAL_CROP
from bench.config.validation import section_class
from bench.strict import Strict, execution, experiment, flat, is_execution
from bench.tricks import DistillConfig, EfficientConfig, LabelSmoothingConfig, MixingConfig, MixupConfig, lr_at
from bench.tricks.cutmix import CutMixConfig

# upper bounds of the counts: far past any real run, below where a library or the memory fails
MAX_BATCH = 2**20          # images per step (ImageNet in 8k-image steps is 2**13)
MAX_PIXELS = 8192          # a side of an image, a crop or its padding
MAX_EPOCHS = 100_000
MAX_THREADS = 1024         # intra-op threads of one process


class ModelConfig(Strict):
    name: str = "resnet18d"            # a timm model name, or resnet50_v1 (bench.engine.models.LOCAL_MODELS)
    small_input: bool = False          # stride-1 stem and no max-pool, for 8-32 px images
    kwargs: dict[str, Any] = {}        # passed to timm.create_model (e.g. channels, stem_width)
    pretrained: Optional[str] = None   # a timm pretrained tag (e.g. resnet152d.ra2_in1k), for teachers
    checkpoint: Optional[str] = None   # a file of weights (a state dict, a run's model.pt, a timm train.py
    #                                    checkpoint, a .safetensors file), for teachers
    checkpoint_key: Optional[str] = None   # the checkpoint's entry to load (e.g. state_dict_ema); None: "model",
    #                                        else "state_dict", else the file's own dict
    init: Literal["timm", "xavier", "msra_prelu"] = "timm"   # the paper's Xavier, GluonCV's MSRA-PReLU (models.initialise)

    @model_validator(mode="after")
    def _key_needs_a_file(self) -> ModelConfig:
        if self.checkpoint_key is not None and self.checkpoint is None:
            raise ValueError(f"model.checkpoint_key={self.checkpoint_key!r} needs model.checkpoint (the file it is an entry of)")
        if self.init != "timm" and self.pretrained:
            raise ValueError(f"model.init={self.init} would overwrite the weights of model.pretrained={self.pretrained!r}")
        return self


class DataConfig(Strict):
    dataset: Literal["digits", "imagenet", "imagefolder", "cifar10", "cifar100", "fashion_mnist"] = "digits"
    # where the files lie (a node-local copy, another mount): a run keeps its identity when they move
    root: Optional[str] = execution(None)       # None: the data set's default places (bench/engine/data)
    download: bool = execution(False)           # cifar10/100, fashion_mnist: fetch when absent
    global_batch_size: int = Field(128, gt=0, le=MAX_BATCH)   # summed over all devices
    eval_batch_size: int = Field(512, gt=0, le=MAX_BATCH)
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)   # digits only: the others have a val split
    max_train_batches: Optional[int] = Field(None, gt=0)  # per epoch; None = the whole set
    max_val_batches: Optional[int] = Field(None, gt=0)
    image_size: Optional[int] = Field(None, ge=8, le=MAX_PIXELS)   # train and eval crop; None: 224 / 32 / 28 / 8
    eval_resize: Optional[int] = Field(None, ge=8, le=MAX_PIXELS)  # eval: shorter side, then center crop; None: size / 0.875
    # DataLoader processes per device (ImageFolder); auto: on a GPU the cores per local rank less
    # one (at most 16), on a CPU 0: the training process reads the items on its threads between steps
    # (the same batches for any count: tests/test_crops.py)
    workers: Union[Literal["auto"], NonNegativeInt] = execution("auto")
    pin_memory: bool = execution(True)
    # worker: workers decode, crop, flip, jitter, add lighting noise and normalise, sending float32;
    # device: workers decode, crop and flip and send uint8, the rest runs batched on the device
    augment_on: Literal["worker", "device"] = "worker"
    # worker: workers decode the JPEGs (PIL); device: workers only read the files' bytes, the
    # device decodes each batch (nvJPEG on CUDA), then crops and flips (needs augment_on: device)
    decode_on: Literal["worker", "device"] = "worker"
    crop_scale: tuple[float, float] = (0.08, 1.0)     # random resized crop: area fraction
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)   # and aspect ratio
    color_jitter: float = Field(0.4, ge=0.0, lt=1.0)  # brightness, contrast, saturation × U[1−j, 1+j]
    # False: brightness, contrast, saturation (GluonCV's train_imagenet.py); True: brightness,
    # saturation and hue, the paper's words (Section 2.1), hue rotated by U[−jπ, jπ] as MXNet's HueJitterAug
    color_jitter_hue: bool = False
    lighting_std: float = Field(0.1, ge=0.0)          # PCA lighting noise (AlexNet), std of the coefficients
    # mean/std: torchvision's and GluonCV's 0.485/0.456/0.406, 0.229/0.224/0.225, or the paper's
    # 123.68/116.779/103.939, 58.393/57.12/57.375 of 255 (Section 2.1; its G and B means are 0.002 higher)
    normalize: Literal["imagenet", "paper"] = "imagenet"
    pad_px: int = Field(4, ge=0, le=MAX_PIXELS)                # CIFAR / Fashion-MNIST: pad, then a random crop
    hflip: bool = True                          # random horizontal flip (not for digits)
    # cifar10/100, fashion_mnist: validate on this many training images, held out (stratified, the
    # same split for every seed), and train on the rest; the test split is not read. For a pilot.
    holdout: Optional[int] = Field(None, gt=0)

    @model_validator(mode="after")
    def _decode_needs_device_augment(self) -> DataConfig:
        if self.decode_on == "device" and self.augment_on != "device":
            raise ValueError(f"decode_on=device needs augment_on=device (not {self.augment_on}): "
                             "images decoded on the device are augmented there")
        spec = DATASETS[self.dataset]
        ignored = [f"{key}={json.dumps(value)}" for key, value in sorted(experiment(self).items())
                   if key in self.model_fields_set - self.applied()]
        if ignored:
            raise ValueError(f"{', '.join(ignored)}: not read for {self.dataset}, whose pipeline reads "
                             f"{', '.join(sorted(spec.keys))} (bench/config/datasets.py)")
        return self

    def applied(self) -> set[str]:
        """The keys this data set's pipeline reads; the others keep their defaults and are left
        out of the run's records."""
        return {key for key in type(self).model_fields if DATASETS[self.dataset].applies(key)}

    def eval_size(self) -> int:
        """Photographs: the shorter side before the center crop, `eval_resize` else size / 0.875."""
        return self.eval_resize or round(self.size() / EVAL_CROP)

    def size(self) -> int:
        """The training crop's side: `image_size`, else the data set's own."""
        return self.image_size or DATASETS[self.dataset].px

    def smoke(self) -> DataConfig:
        """3 training and 2 validation batches; for photographs also batches of at most 8 images
        of a quarter of the size (at least 32 px, and 75 px for Inception-V3's 299)."""
        update: dict[str, Any] = {"max_train_batches": 3, "max_val_batches": 2}
        if DATASETS[self.dataset].photographs:
            size = self.size()
            update.update(global_batch_size=min(self.global_batch_size, 8), eval_batch_size=min(self.eval_batch_size, 8),
                          image_size=max(32, -(-size // 4)), eval_resize=max(32, -(-self.eval_size() // 4)), workers=0)
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
    epochs: int = Field(120, gt=0, le=MAX_EPOCHS)
    warmup_epochs: int = Field(0, ge=0)
    # epochs at which "step" multiplies the lr by gamma; fractional where a change of `epochs`
    # moved them (bench.config.overrides.scale_milestones), as an iteration of the run
    milestones: list[Union[int, float]] = []
    gamma: float = Field(0.1, gt=0.0, le=1.0)

    @field_validator("milestones")
    @classmethod
    def _whole_as_int(cls, milestones: list) -> list:
        return [int(m) if float(m).is_integer() else m for m in milestones]

    def tags(self) -> list[str]:
        """The refinements switched on, as run tags."""
        return (["warmup"] if self.warmup_epochs > 0 else []) + (["cosine"] if self.kind == "cosine" else [])


# used only by a run that decays by steps: two runs that do not both decay so do not differ in them
STEP_ONLY = frozenset({"schedule.milestones", "schedule.gamma"})


class RuntimeConfig(Strict):
    device: Literal["auto", "cpu", "cuda", "mps"] = execution("auto")   # auto: CUDA, then MPS, then the CPU
    channels_last: bool = execution(True)     # memory layout: the same maths, other kernels (as threads)
    # True: deterministic kernels (bit-exact resume); auto: deterministic on CPU, cuDNN autotuning
    # on CUDA (the ImageNet recipes, where it buys speed and determinism buys nothing at that scale),
    # off on MPS (which has kernels without a deterministic variant)
    deterministic: Union[bool, Literal["auto"]] = True
    compile: bool = execution(False)   # torch.compile the model (in place); opt-in, measured both ways
    sync_bn: bool = False              # SyncBatchNorm across ranks under DDP (CUDA only)
    # intra-op CPU threads of each process; auto: the cores this process may use (affinity,
    # SLURM_CPUS_PER_TASK) shared among the local ranks
    threads: Union[Literal["auto"], Annotated[int, Field(gt=0, le=MAX_THREADS)]] = execution("auto")
    # the NaN/inf loss guard, a stop request (SLURM's signal) and a checkpoint falling due are
    # looked at every this many batches, one device sync each, and at every epoch's end
    nan_check_steps: int = execution(50, gt=0, le=10**6)
    # a checkpoint within an epoch (data position and RNG included) every this many minutes, at
    # the first check after it falls due; None or 0: at epoch ends only
    checkpoint_every_min: Optional[float] = execution(10.0, ge=0.0)


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
    seed: int = Field(0, ge=0, le=2**32 - 1)   # what every RNG here accepts (NumPy's legacy seeding: < 2**32)

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

    def record(self) -> dict[str, Any]:
        """The config as a run records it (config.yaml, W&B, runs.csv): every key, less the data
        keys its data set does not read (never recorded as if they were used)."""
        tree = self.model_dump(mode="json")
        tree["data"] = {key: value for key, value in tree["data"].items() if key in self.data.applied()}
        return tree

    def experiment(self) -> dict[str, Any]:
        """What the run is: its experiment keys that differ from their defaults (`bench.strict`)."""
        return {"schema": SCHEMA, **experiment(self)}

    def config_hash(self) -> str:
        """The run's identity: a hash of `experiment()`. Execution keys (`bench.strict.execution`)
        are not in it; a new key with a default that keeps the old behaviour leaves it as it was."""
        return hashlib.sha256(json.dumps(self.experiment(), sort_keys=True).encode()).hexdigest()[:12]

    def differences(self, other: RunConfig) -> list[str]:
        """The experiment keys in which `other` differs from this config: "key: theirs → mine"."""
        def shown(cfg: RunConfig, key: str) -> str:
            value: Any = cfg.model_dump(mode="json")
            for part in key.split("."):
                value = value.get(part) if isinstance(value, dict) else None
            return "off" if value is None else json.dumps(value, sort_keys=True)
        keys = flat(self.experiment()).keys() | flat(other.experiment()).keys()
        return [f"{key}: {shown(other, key)} → {shown(self, key)}" for key in sorted(keys) if shown(other, key) != shown(self, key)]


def experiment_key(dotted: str) -> bool:
    """Whether a recorded config key ("runtime.threads", "mixup.alpha") is part of what a run is,
    not an execution key (`bench.strict.execution`); a key the schema no longer has counts."""
    cls, *parents, leaf = (RunConfig, *dotted.split("."))
    for part in parents:
        field = cls.model_fields.get(part)
        cls = section_class(field.annotation) if field else None
        if cls is None:
            return True
    return not (leaf in cls.model_fields and is_execution(cls, leaf))


# The experiment schema. Changing the default of an experiment key changes what the runs that kept
# it are: bump this and migrate the recorded runs (bench/runs/migrate.py), never keep a list.
SCHEMA = 2


def schedule_for(cfg: RunConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """The learning rate as a pure function of the global step, from the run's schedule, peak lr
    and iterations per epoch: the one schedule the loop, the figures and the benchmark use."""
    s = cfg.schedule
    args = dict(peak_lr=cfg.peak_lr(), total_steps=s.epochs * steps_per_epoch, kind=s.kind,
                warmup_steps=s.warmup_epochs * steps_per_epoch, gamma=s.gamma,
                milestones=[round(m * steps_per_epoch) for m in s.milestones])
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
