"""Recipes: a base config, models, teachers and cumulative steps; each (model, step, seed)
resolves to one `RunConfig`. A recipe may `extends:` another recipe file and change a few keys."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, Optional

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import Field

from bench.config.overrides import apply_overrides, deep_merge, load_yaml, settle, stack_sets
from bench.config.schema import ModelConfig, RunConfig, WandbConfig
from bench.config.validation import check_size, validate
from bench.errors import ConfigError, first_line
from bench.strict import Strict

NAME_PATTERN = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"
NAME_MAX = 100   # a name is a path component (and part of a lock file's and a W&B run's): well under 255 bytes


class StepSpec(Strict):
    name: str = Field(pattern=NAME_PATTERN, max_length=NAME_MAX)
    set: dict[str, Any] = {}
    parent: Optional[str] = None   # the step this one builds on; default: the previous step


class Variant(Strict):
    name: str = Field(pattern=NAME_PATTERN, max_length=NAME_MAX)
    set: dict[str, Any] = {}


class TeacherSpec(Variant):
    train: bool = True   # False: use the weights of model.checkpoint or model.pretrained as they are


class Recipe(Strict):
    name: str = Field(pattern=NAME_PATTERN, max_length=NAME_MAX)
    paper_table: Optional[str] = None           # compare against results/paper/<paper_table>.csv
    paper_models: dict[str, str] = {}           # model column -> the paper's model it stands in for
    description: str = ""
    seeds: list[Annotated[int, Field(ge=0, le=2**32 - 1)]] = Field([0], min_length=1)
    base: dict[str, Any] = {}
    models: list[Variant] = []                  # one column each; empty: just base.model
    teachers: list[TeacherSpec] = []            # trained first (unless train: false), from base + their `set`
    steps: list[StepSpec] = Field(min_length=1)
    design: Literal["staircase", "leave-one-out", "add-one", "factorial"] = "staircase"   # bench.ablation.designs
    tricks: list[str] = []                      # a design's tricks; empty: the last step's chain
    wandb: Optional[WandbConfig] = None         # Weights & Biases logging; absent: off (see --wandb)


# the shipped recipes are under 3 KB; PyYAML's pure-Python parser takes seconds a few hundred KB
MAX_RECIPE_BYTES = 64 << 10


def read_yaml(path: Path, what: str = "recipe", shape: str = "a mapping with base and steps") -> dict:
    """The mapping of a recipe (or another settings) file; any problem as a one-line `ConfigError`."""
    if not path.is_file():
        raise ConfigError(f"{path}: {what} file not found")
    size = path.stat().st_size
    if size > MAX_RECIPE_BYTES:
        raise ConfigError(f"{path}: {size:,} bytes; a {what} file is at most {MAX_RECIPE_BYTES:,}")
    try:
        raw = load_yaml(path.read_bytes())   # bytes: PyYAML names a file that is not UTF-8/16 text
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}: line {mark.line + 1}" if mark else str(path)
        problem = getattr(err, "problem", None) or first_line(err)
        raise ConfigError(f"{where}: malformed YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: malformed YAML: nested too deeply") from None
    except (ValueError, TypeError, OverflowError) as err:   # a tag the value does not fit: !!int x, !!timestamp 2001-13-45
        raise ConfigError(f"{path}: malformed YAML: {first_line(err) or type(err).__name__}") from None
    check_size(raw, str(path))
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a {what} file is {shape}, got {type(raw).__name__}")
    return raw


def _read_with_parents(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The recipe's mapping on top of the one it `extends:` (a path relative to it): mappings
    merge key by key, lists (steps, models, teachers, seeds) are replaced whole."""
    raw = read_yaml(path)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if not isinstance(parent, str) or "\0" in parent:
        raise ConfigError(f"{path}: extends = {parent!r}: expected the path of another recipe file")
    parent_path = (path.parent / parent).resolve()
    if not parent_path.is_file():
        raise ConfigError(f"{path}: extends = {parent!r}: no such recipe file ({parent_path})")
    if parent_path in seen or parent_path == path.resolve():
        chain = " -> ".join(p.name for p in (*seen, path.resolve(), parent_path))
        raise ConfigError(f"{path}: extends = {parent!r}: recipes extend each other in a cycle ({chain})")
    return deep_merge(_read_with_parents(parent_path, (*seen, path.resolve())), raw)


def load_recipe(path: str | Path) -> Recipe:
    """Read and validate a recipe file; every step of every model must resolve to a valid run."""
    path = Path(path)
    raw = _read_with_parents(path)
    try:
        raw = OmegaConf.to_container(OmegaConf.create(raw), resolve=True)
    except OmegaConfBaseException as err:
        raise ConfigError(f"{path}: {first_line(err)}") from None
    recipe = validate(Recipe, raw, str(path))
    check_recipe(recipe, str(path))
    return recipe


def check_recipe(recipe: Recipe, where: str, overrides: tuple[tuple[str, Any], ...] = (),
                 steps: Optional[Sequence[str]] = None, models: Optional[Sequence[str]] = None) -> None:
    """Names unique, parents and teachers known, and every (model, step) and teacher resolves.
    `steps` and `models` narrow that to the runs of `--only` and `--models` and the teachers they
    distil from, so that an error in an override names only runs that would train."""
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
    runs = [(m, s.name) for m in model_names(recipe) if not models or m in models
            for s in recipe.steps if not steps or s.name in steps]
    teachers = [t.name for t in recipe.teachers]
    used = teachers if steps is None and models is None else [
        t for t in teachers if t in {getattr(resolve_step(recipe, m, s, where).distill, 'teacher', None) for m, s in runs}]
    for teacher in used:   # teachers train first, so their errors come first
        _check_teacher(recipe, teacher, where, overrides)
    for model, step in runs:
        cfg = resolve_step(recipe, model, step, where, overrides)
        if cfg.distill is not None and cfg.distill.teacher not in teachers:
            raise ConfigError(f"{where}: step '{step}': distill.teacher = '{cfg.distill.teacher}' is not a teacher "
                              f"of this recipe (teachers: {', '.join(teachers) or 'none'})")
        if cfg.distill is not None and cfg.distill.teacher not in used:   # an override chose another teacher
            _check_teacher(recipe, cfg.distill.teacher, where, overrides)


def _check_teacher(recipe: Recipe, teacher: str, where: str, overrides: tuple[tuple[str, Any], ...]) -> None:
    cfg = resolve_teacher(recipe, teacher, where, overrides)
    spec = next(t for t in recipe.teachers if t.name == teacher)
    if not spec.train and not (cfg.model.checkpoint or cfg.model.pretrained):
        raise ConfigError(f"{where}: teacher '{teacher}': train: false needs model.checkpoint or model.pretrained")
    if cfg.distill is not None:
        raise ConfigError(f"{where}: teacher '{teacher}': a teacher cannot itself distil")


def model_names(recipe: Recipe) -> list[str]:
    """Column labels: the `models:` names, or the base model's name."""
    if recipe.models:
        return [m.name for m in recipe.models]
    return [str(recipe.base.get("model", {}).get("name", ModelConfig().name))]


def parent_step(recipe: Recipe, i: int) -> Optional[str]:
    """The step the recipe's i-th (0-based) builds on: its `parent:`, else the step before it."""
    step = recipe.steps[i]
    return step.parent or (recipe.steps[i - 1].name if i > 0 else None)


_STEP_RAWS: dict[tuple[int, str], tuple[Recipe, list, dict[str, tuple]]] = {}   # (id(recipe), model) → its steps' stacks


def model_raw(recipe: Recipe, model: str) -> dict:
    """The recipe's base with the model's `set:`."""
    raw = recipe.base
    for variant in recipe.models:
        if variant.name == model:
            raw = deep_merge(raw, variant.set)
    return raw


def _step_raw(recipe: Recipe, model: str, step_name: str) -> dict:
    """The model's base with the step's parent chain's `set:`s, oldest first (`stack_sets`: the
    schedule keeps its shape). All steps' are stacked in one pass, each on its parent's, and kept
    for the recipe and model, so resolving every step of a recipe takes time linear in its steps
    (walking each chain anew took quadratic time)."""
    key = (id(recipe), model)
    cached = _STEP_RAWS.get(key)
    if cached is None or cached[0] is not recipe or cached[1] != [id(s) for s in recipe.steps]:
        stacks: dict[str, tuple] = {}
        for i, step in enumerate(recipe.steps):
            parent = parent_step(recipe, i)
            raw, moved = stacks[parent] if parent else (model_raw(recipe, model), None)
            stacks[step.name] = stack_sets(raw, [step.set], moved)
        if len(_STEP_RAWS) >= 8:
            _STEP_RAWS.clear()
        cached = _STEP_RAWS[key] = (recipe, [id(s) for s in recipe.steps], stacks)
    return settle(*cached[2][step_name])


def _finish(raw: dict, where: str, overrides, seed: int) -> RunConfig:
    recipe_cfg = validate(RunConfig, raw, where)   # errors in the recipe itself are reported against the file
    raw = apply_overrides(raw, overrides, recipe_cfg.schedule)
    raw["seed"] = seed
    return validate(RunConfig, raw, f"{where} with --set" if overrides else where)


def resolve_step(recipe: Recipe, model: str, step: str, where: str = "recipe",
                 overrides: tuple[tuple[str, Any], ...] = (), seed: int = 0,
                 step_sets: Optional[Sequence[dict]] = None) -> RunConfig:
    """base + the model's `set` + the step's chain of `set:`s (or `step_sets`, in order: a design's
    run that no step is, bench.ablation.designs), the schedule keeping its shape (`stack_sets`),
    + the `--set` overrides."""
    raw = _step_raw(recipe, model, step) if step_sets is None else settle(*stack_sets(model_raw(recipe, model), step_sets))
    return _finish(raw, f"{where}: model '{model}', step '{step}'", overrides, seed)


def resolve_teacher(recipe: Recipe, teacher: str, where: str = "recipe",
                    overrides: tuple[tuple[str, Any], ...] = (), seed: int = 0) -> RunConfig:
    """base + the teacher's `set` + the `--set` overrides."""
    spec = next(t for t in recipe.teachers if t.name == teacher)
    return _finish(settle(*stack_sets(recipe.base, [spec.set])), f"{where}: teacher '{teacher}'", overrides, seed)
