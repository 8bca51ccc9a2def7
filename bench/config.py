"""Recipe schema: frozen, strict sections; loading, cumulative steps and `--set` overrides."""
from __future__ import annotations

import copy
import difflib
import hashlib
import json
import typing
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, Field, ValidationError, model_validator

from bench.errors import ConfigError
from bench.schema import Strict
from bench.tracking import WandbConfig
from bench.tricks import DistillConfig, EfficientConfig, LabelSmoothingConfig, MixupConfig

NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"


class ModelConfig(Strict):
    name: str = "resnet18d"            # a timm model name, or resnet50_v1 (bench.models.LOCAL_MODELS)
    small_input: bool = False          # stride-1 stem and no max-pool, for 8-32 px images
    kwargs: dict[str, Any] = {}        # passed to timm.create_model (e.g. channels, stem_width)
    pretrained: Optional[str] = None   # a timm pretrained tag (e.g. resnet152d.ra2_in1k), for teachers
    checkpoint: Optional[str] = None   # a file of weights (a state dict, or a run's model.pt), for teachers


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
    workers: int = Field(8, ge=0)               # DataLoader processes per device (ImageFolder)
    pin_memory: bool = True
    crop_scale: tuple[float, float] = (0.08, 1.0)     # random resized crop: area fraction
    crop_ratio: tuple[float, float] = (0.75, 4 / 3)   # and aspect ratio
    color_jitter: float = Field(0.4, ge=0.0, lt=1.0)  # brightness, contrast, saturation × U[1−j, 1+j]
    lighting_std: float = Field(0.1, ge=0.0)          # PCA lighting noise (AlexNet), std of the coefficients
    pad_px: int = Field(4, ge=0)                # CIFAR / Fashion-MNIST: pad, then a random crop
    hflip: bool = True                          # random horizontal flip (not for digits)

    def smoke(self) -> "DataConfig":
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


class RuntimeConfig(Strict):
    device: Literal["auto", "cpu", "cuda"] = "auto"
    channels_last: bool = True
    deterministic: bool = True
    compile: bool = False              # torch.compile the model (in place); opt-in, measured both ways
    sync_bn: bool = False              # SyncBatchNorm across ranks under DDP (CUDA only)


class RunConfig(Strict):
    """Everything one training run needs; a trick section set to None is off."""

    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    efficient: EfficientConfig = EfficientConfig()
    label_smoothing: Optional[LabelSmoothingConfig] = None
    mixup: Optional[MixupConfig] = None
    distill: Optional[DistillConfig] = None
    runtime: RuntimeConfig = RuntimeConfig()
    seed: int = 0

    @model_validator(mode="after")
    def _consistent(self) -> "RunConfig":
        s = self.schedule
        if s.warmup_epochs > s.epochs:
            raise ValueError(f"schedule.warmup_epochs={s.warmup_epochs} exceeds schedule.epochs={s.epochs}")
        if list(s.milestones) != sorted(set(s.milestones)) or any(not 0 < m <= s.epochs for m in s.milestones):
            raise ValueError(f"schedule.milestones={s.milestones} must be increasing epochs in (0, {s.epochs}]")
        if self.mixup is not None and self.mixup.off_epochs >= s.epochs:
            raise ValueError(f"mixup.off_epochs={self.mixup.off_epochs} leaves no mixed epoch of {s.epochs}")
        return self

    def peak_lr(self) -> float:
        return self.optim.lr_per_256 * self.data.global_batch_size / 256

    def config_hash(self) -> str:
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


class StepSpec(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    set: dict[str, Any] = {}
    parent: Optional[str] = None   # the step this one builds on; default: the previous step


class Variant(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    set: dict[str, Any] = {}


class TeacherSpec(Variant):
    train: bool = True   # False: use the weights of model.checkpoint or model.pretrained as they are


class Recipe(Strict):
    name: str = Field(pattern=NAME_PATTERN)
    paper_table: Optional[str] = None           # compare against results/paper/<paper_table>.csv
    paper_models: dict[str, str] = {}           # model column -> the paper's model it stands in for
    description: str = ""
    seeds: list[int] = Field([0], min_length=1)
    base: dict[str, Any] = {}
    models: list[Variant] = []                  # one column each; empty: just base.model
    teachers: list[TeacherSpec] = []            # trained first (unless train: false), from base + their `set`
    steps: list[StepSpec] = Field(min_length=1)
    wandb: Optional[WandbConfig] = None         # Weights & Biases logging; absent: off (see --wandb)


def deep_merge(base: dict, override: dict) -> dict:
    """`override` on top of `base`, recursively; a None value replaces (switches a trick off)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _section_class(annotation: Any) -> Optional[type[BaseModel]]:
    """The config class behind a field annotation (unwrapping Optional), or None for a leaf."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _section_class(arg)
        if found is not None:
            return found
    return None


def _unknown_key(key: str, cls: type[BaseModel], where: str) -> ConfigError:
    valid = list(cls.model_fields)
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"{where}: unknown key '{key}'{hint}; valid keys: {', '.join(valid)}")


def _format_validation(err: ValidationError, cls: type[BaseModel], where: str) -> ConfigError:
    """The first pydantic error as one line: where, the dotted key, its value, what is wrong."""
    first = err.errors()[0]
    loc = [str(part) for part in first["loc"]]
    if first["type"] == "extra_forbidden":
        owner = cls
        for part in loc[:-1]:
            field = owner.model_fields.get(part) if owner else None
            owner = _section_class(field.annotation) if field else None
        if owner is not None:
            prefix = ".".join(loc[:-1])
            return _unknown_key(loc[-1], owner, f"{where}: {prefix}" if prefix else where)
    key = ".".join(loc) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    value = first.get("input")
    shown = "" if isinstance(value, dict) or not loc else f" = {value!r}"
    return ConfigError(f"{where}: {key}{shown}: {msg}")


def validate_run(raw: dict, where: str) -> RunConfig:
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as err:
        raise _format_validation(err, RunConfig, where) from None


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file; every step of every model must resolve to a valid run."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: recipe file not found")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"{path}:{line}: malformed YAML: {problem}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a recipe is a mapping with base and steps, got {type(raw).__name__}")
    try:
        raw = OmegaConf.to_container(OmegaConf.create(raw), resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path}: {str(err).splitlines()[0]}") from None
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as err:
        raise _format_validation(err, Recipe, str(path)) from None
    check_recipe(recipe, str(path))
    return recipe


def check_recipe(recipe: Recipe, where: str, overrides: tuple[tuple[str, Any], ...] = ()) -> None:
    """Names unique, parents and teachers known, and every (model, step) and teacher resolves."""
    for kind, items in (("step", recipe.steps), ("model", recipe.models), ("teacher", recipe.teachers)):
        names = [item.name for item in items]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ConfigError(f"{where}: duplicate {kind} name '{dupes[0]}'")
    seen: list[str] = []
    for step in recipe.steps:
        if step.parent is not None and step.parent not in seen:
            raise ConfigError(f"{where}: step '{step.name}': parent '{step.parent}' is not an earlier step ({', '.join(seen) or 'none'})")
        seen.append(step.name)
    for model in recipe.paper_models:
        if model not in model_names(recipe):
            raise ConfigError(f"{where}: paper_models: '{model}' is not a model of this recipe ({', '.join(model_names(recipe))})")
    teachers = [t.name for t in recipe.teachers]
    for teacher in recipe.teachers:
        model = resolve_teacher(recipe, teacher.name, where, overrides).model
        if not teacher.train and not (model.checkpoint or model.pretrained):
            raise ConfigError(f"{where}: teacher '{teacher.name}': train: false needs model.checkpoint or model.pretrained")
        cfg = resolve_teacher(recipe, teacher.name, where, overrides)
        if cfg.distill is not None:
            raise ConfigError(f"{where}: teacher '{teacher.name}': a teacher cannot itself distil")
    for model in model_names(recipe):
        for step in recipe.steps:
            cfg = resolve_step(recipe, model, step.name, where, overrides)
            if cfg.distill is not None and cfg.distill.teacher not in teachers:
                raise ConfigError(f"{where}: step '{step.name}': distill.teacher = '{cfg.distill.teacher}' is not a teacher of this recipe (teachers: {', '.join(teachers) or 'none'})")


def model_names(recipe: Recipe) -> list[str]:
    """Column labels: the `models:` names, or the base model's name."""
    if recipe.models:
        return [m.name for m in recipe.models]
    return [str(recipe.base.get("model", {}).get("name", ModelConfig().name))]


def _step_raw(recipe: Recipe, step_name: str) -> dict:
    """The cumulative overrides of a step: its parent chain's `set:`s, oldest first."""
    index = {s.name: i for i, s in enumerate(recipe.steps)}
    chain, i = [], index[step_name]
    while i is not None:
        step = recipe.steps[i]
        chain.append(step.set)
        i = index[step.parent] if step.parent else (i - 1 if i > 0 else None)
    raw: dict = {}
    for overrides in reversed(chain):
        raw = deep_merge(raw, overrides)
    return raw


def _finish(raw: dict, where: str, overrides, seed: int) -> RunConfig:
    validate_run(raw, where)   # errors in the recipe itself are reported against the file
    for path, value in overrides:
        raw = apply_override(raw, path, value)
    raw["seed"] = seed
    return validate_run(raw, f"{where} with --set" if overrides else where)


def resolve_step(recipe: Recipe, model: str, step: str, where: str = "recipe",
                 overrides: tuple[tuple[str, Any], ...] = (), seed: int = 0) -> RunConfig:
    """base + the model's `set` + the step's cumulative `set` + the `--set` overrides."""
    raw = recipe.base
    for variant in recipe.models:
        if variant.name == model:
            raw = deep_merge(raw, variant.set)
    raw = deep_merge(raw, _step_raw(recipe, step))
    return _finish(raw, f"{where}: model '{model}', step '{step}'", overrides, seed)


def resolve_teacher(recipe: Recipe, teacher: str, where: str = "recipe",
                    overrides: tuple[tuple[str, Any], ...] = (), seed: int = 0) -> RunConfig:
    """base + the teacher's `set` + the `--set` overrides."""
    spec = next(t for t in recipe.teachers if t.name == teacher)
    return _finish(deep_merge(recipe.base, spec.set), f"{where}: teacher '{teacher}'", overrides, seed)


def parse_override(text: str) -> tuple[str, Any]:
    """`key.path=value` → ("key.path", value), the value read as YAML; the path checked."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected key.path=value")
    try:
        parsed = yaml.safe_load(value) if value else None
    except yaml.YAMLError:
        raise ConfigError(f"--set {text!r}: value {value!r} is not valid YAML") from None
    cls: Optional[type[BaseModel]] = RunConfig
    parts = key.split(".")
    for i, part in enumerate(parts):
        if cls is None:   # a free mapping such as model.kwargs
            break
        if part not in cls.model_fields:
            where = f"--set {key}" + (f": in '{'.'.join(parts[:i])}'" if i else "")
            raise _unknown_key(part, cls, where)
        if i < len(parts) - 1:
            field = cls.model_fields[part]
            cls = _section_class(field.annotation)
            if cls is None and field.annotation is not dict and typing.get_origin(field.annotation) is not dict:
                raise ConfigError(f"--set {key}: '{'.'.join(parts[:i + 1])}' is a value, not a section")
    return key, parsed


def apply_override(raw: dict, path: str, value: Any) -> dict:
    """Set `path` in a run's raw config. A path through a trick that is off (None) leaves the
    run alone, so `--set distill.temperature=4` changes only the runs that distil."""
    out = copy.deepcopy(raw)
    node, cls = out, RunConfig
    parts = path.split(".")
    for part in parts[:-1]:
        field = cls.model_fields.get(part) if cls else None
        if node.get(part) is None:
            if field is not None and field.default is None and not field.is_required():
                return raw
            node[part] = {}
        node, cls = node[part], (_section_class(field.annotation) if field else None)
    node[parts[-1]] = value
    return out


def smoke_config(cfg: RunConfig) -> RunConfig:
    """The same run shrunk to 2 epochs of 3 batches, for checking a pipeline end to end."""
    s = cfg.schedule
    epochs = min(s.epochs, 2)
    milestones = sorted({max(1, min(epochs, round(m * epochs / s.epochs))) for m in s.milestones})
    update: dict[str, Any] = {
        "schedule": s.model_copy(update={"epochs": epochs, "warmup_epochs": min(s.warmup_epochs, 1),
                                         "milestones": milestones}),
        "data": cfg.data.smoke(),
    }
    if cfg.mixup is not None:
        update["mixup"] = cfg.mixup.model_copy(update={"off_epochs": 0})
    return cfg.model_copy(update=update)
