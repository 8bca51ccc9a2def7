"""A recipe becomes ordered runs: teachers first, then models × steps × seeds, each with its
config, its place under the results directory and the step it builds on. Checked before
anything is written: unknown models, and configs that would carry a secret."""
from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import timm

from bench.ablation.designs import arm_pairs, beyond_the_trick, design_cells
from bench.config import Recipe, RunConfig, check_recipe, model_names, resolve_step, resolve_teacher, smoke_config
from bench.engine.models import LOCAL_MODELS
from bench.errors import ConfigError
from bench.runs import sha256_file
from bench.runs.rundir import student_path, teacher_path


@dataclass(frozen=True)
class RunSpec:
    """One training run of an ablation, with where it lives under the results directory."""

    model: str
    role: str                 # "student" (a step of the recipe), "design" (a design's own run) or "teacher"
    step: str
    step_index: int           # 1-based position in the recipe; 0 for teachers and a design's own runs
    parent_step: Optional[str]  # the step this one is compared with
    seed: int
    config: RunConfig
    path: Path                # relative to the results directory
    teacher_path: Optional[Path] = None
    paper_table: Optional[str] = None   # the recipe's paper_table, for the report
    paper_model: Optional[str] = None   # the paper's model this column stands in for
    teacher_config: Optional[RunConfig] = None   # a teacher given as weights (train: false)
    teacher_hash: Optional[str] = None   # the teacher's identity, part of a distilled run's (`teacher_hash`)
    stack: Optional[str] = None   # its tricks, after the baseline: "efficient+cosine+mixup" (bench.ablation.designs)
    recipe: Optional[str] = None  # the recipe's name: a results folder holds one recipe's runs

    @property
    def label(self) -> str:
        return str(self.path)

    def record(self) -> dict[str, Any]:
        """The identifying fields every row about this run carries."""
        return {"model": self.model, "role": self.role, "step": self.step, "step_index": self.step_index,
                "parent_step": self.parent_step, "seed": self.seed, "config_hash": self.config.config_hash(),
                "teacher": str(self.teacher_path) if self.teacher_path else _given_teacher(self.teacher_config),
                "teacher_hash": self.teacher_hash, **({"stack": self.stack} if self.stack else {}),
                **({"recipe": self.recipe} if self.recipe else {}),
                "paper_table": self.paper_table, "paper_model": self.paper_model}


def _given_teacher(cfg: Optional[RunConfig]) -> Optional[str]:
    """How a teacher that is not trained here is named in the records."""
    if cfg is None:
        return None
    return cfg.model.checkpoint or f"{cfg.model.name}.{cfg.model.pretrained}"


def given_teacher_hash(cfg: RunConfig, digests: dict[str, str], label: str) -> str:
    """The identity of a teacher given as weights: the hash of its config with model.checkpoint
    read as the file's sha256 (the same bytes anywhere are the same teacher, other bytes another);
    a pretrained tag counts as it is. (A trained teacher's identity is its config hash.)"""
    path = cfg.model.checkpoint
    if path is None:
        return cfg.config_hash()
    if path not in digests:
        if not Path(path).is_file():
            raise ConfigError(f"{label}: model.checkpoint = {path}: no such file")
        digests[path] = sha256_file(Path(path))
    return cfg.model_copy(update={"model": cfg.model.model_copy(update={"checkpoint": f"sha256:{digests[path]}"})}).config_hash()


def plan(recipe: Recipe, *, seeds: Optional[Sequence[int]] = None, only: Optional[Sequence[str]] = None,
         models: Optional[Sequence[str]] = None, overrides: tuple[tuple[str, Any], ...] = (), smoke: bool = False,
         where: str = "recipe", design: Optional[str] = None, tricks: Optional[Sequence[str]] = None) -> list[RunSpec]:
    """Every run the recipe asks for, teachers first, then models × steps × seeds; `only` and
    `models` keep the named steps and model columns (and the teachers they need). `design` and
    `tricks` (default: the recipe's) choose the runs other than the staircase (bench.ablation.designs)."""
    design = design or recipe.design
    cells = design_cells(recipe, design, tricks or recipe.tricks or None, where)
    if only and design != "staircase":
        raise ConfigError(f"--only picks steps of the staircase; with --design {design}, --tricks chooses the runs")
    for flag, names, known in (("--only", only, [s.name for s in recipe.steps]), ("--models", models, model_names(recipe))):
        for name in names or ():
            if name not in known:
                kind = "step" if flag == "--only" else "model"
                raise ConfigError(f"{flag} {name}: no such {kind} in {where} ({kind}s: {', '.join(known)})")
    if overrides:   # only the runs planned: an error names none that would not train
        check_recipe(recipe, where, overrides, steps=only, models=models)
    kept = [key for key, _ in overrides]   # what --set says takes effect under --smoke too
    shrink: Callable[[RunConfig], RunConfig] = (lambda c: smoke_config(c, kept)) if smoke else (lambda c: c)
    students, teachers_needed = [], {}
    trained = {t.name: t.train for t in recipe.teachers}
    digests: dict[str, str] = {}   # of the weights files of given teachers, each read once
    for seed in seeds if seeds is not None else recipe.seeds:
        for model in model_names(recipe):
            if models and model not in models:
                continue
            for cell in cells:
                if only and cell.name not in only:
                    continue
                cfg = shrink(resolve_step(recipe, model, cell.name, where, overrides, seed, cell.sets))
                teacher_dir, teacher_cfg, identity = None, None, None
                if cfg.distill is not None and trained[cfg.distill.teacher]:
                    teacher_dir = teacher_path(cfg.distill.teacher, seed)
                    teachers_needed[teacher_dir] = (cfg.distill.teacher, seed)
                    identity = shrink(resolve_teacher(recipe, cfg.distill.teacher, where, overrides, seed)).config_hash()
                elif cfg.distill is not None:   # given weights: loaded, not trained
                    teacher_cfg = resolve_teacher(recipe, cfg.distill.teacher, where, overrides, seed)
                    identity = given_teacher_hash(teacher_cfg, digests, f"{where}: teacher '{cfg.distill.teacher}'")
                path = student_path(model, cell.index, cell.name, seed) if cell.index else Path(model, cell.name, f"seed{seed}")
                students.append(RunSpec(model, "student" if cell.index else "design", cell.name, cell.index, cell.parent,
                                        seed, cfg, path, teacher_dir, recipe.paper_table,
                                        recipe.paper_models.get(model, model), teacher_cfg, identity, "+".join(cell.stack),
                                        recipe.name))
    check_contrasts(recipe, cells, students, where)
    teachers = []
    for path, (name, seed) in teachers_needed.items():
        cfg = shrink(resolve_teacher(recipe, name, where, overrides, seed))
        teachers.append(RunSpec(cfg.model.name, "teacher", name, 0, None, seed, cfg, path, recipe=recipe.name))
    check_specs(teachers + students, where)   # unknown models, secrets: before anything is written
    return teachers + students


def check_contrasts(recipe: Recipe, cells, students: Sequence[RunSpec], where: str) -> None:
    """Every contrast the design makes changes its trick alone: the two arms of each (per model, at
    its first seed) differ only in the trick's own `set:` (`beyond_the_trick`), else a one-line error
    before anything runs."""
    configs = {(s.model, s.step): s.config for s in reversed(students)}   # the first seed's
    for model in dict.fromkeys(s.model for s in students):
        for with_, without, trick in arm_pairs(recipe, cells):
            if (model, with_.name) in configs and (model, without.name) in configs:
                extra = beyond_the_trick(recipe, trick, configs[(model, with_.name)], configs[(model, without.name)])
                if extra:
                    raise ConfigError(f"{where}: model '{model}': {with_.name} against {without.name} (the trick "
                                      f"'{trick}') also changes {', '.join(extra)}, which is not in '{trick}''s set:; "
                                      "set it in that step alone, or the same in both runs")


SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)


def secret_values() -> dict[str, str]:
    """Values of the environment variables whose names say they are secrets (8+ characters)."""
    return {name: value for name, value in os.environ.items() if SECRET_NAME.search(name) and len(value) >= 8}


def check_specs(specs: Iterable, where: str) -> None:
    """Every model name is known to timm (or bench.engine.models), and no config carries a secret,
    since configs are written to config.yaml, final.json and W&B."""
    secrets = secret_values()
    seen: set[str] = set()
    for spec in specs:
        cfg = spec.config
        label = f"{where}: {'teacher' if spec.role == 'teacher' else f'model {spec.model!r}, step'} {spec.step!r}"
        if cfg.model.name not in seen:
            seen.add(cfg.model.name)
            if cfg.model.name not in LOCAL_MODELS and not timm.is_model(cfg.model.name):
                close = timm.list_models(f"*{cfg.model.name.split('_')[0][:6]}*")[:5]
                hint = f" (similar: {', '.join(close)})" if close else ""
                raise ConfigError(f"{label}: model.name = {cfg.model.name!r}: unknown model{hint}")
        blob = json.dumps(cfg.model_dump(mode="json"))
        for name, value in secrets.items():
            if value in blob:
                raise ConfigError(f"{label}: the config holds the value of ${name}; secrets are never written to "
                                  "configs (W&B reads its key from the environment)")
