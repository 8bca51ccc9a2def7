"""Ablation designs from one recipe's steps. The first step is the baseline; each later step's own
`set:` is a trick.

- staircase: the steps as written, each on its parent (the paper's design, the default);
- leave-one-out: the full stack of tricks, and the full stack less each one;
- add-one: the baseline, and the baseline plus each trick alone;
- factorial: every subset of the tricks, 2^k runs.

The tricks are those on the last step's chain (its parents back to the baseline), or `--tricks`.
A run whose tricks are a staircase step's chain *is* that step's run (its path, its identity), so
designs share it and it trains once; any other set of tricks is named `<baseline>+<trick>+...`,
the same name whichever design asks for it.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Optional

from bench.config import Recipe, RunConfig
from bench.config.recipe import NAME_MAX, parent_step
from bench.config.schema import STEP_ONLY
from bench.errors import ConfigError
from bench.strict import flat

DESIGNS = ("staircase", "leave-one-out", "add-one", "factorial")


@dataclass(frozen=True)
class Cell:
    """One run of a design, before model and seed: the step it is, or a set of tricks no step has."""

    name: str                   # the step's name; a design's own run: <baseline>+<trick>+...
    index: int                  # the step's place in the recipe (1-based); 0: a design's own run
    parent: Optional[str]       # the run it is compared with (staircase) or changed from (the baseline)
    sets: Optional[tuple]       # its tricks' `set:`s in order; None: a step's, resolved as the step
    stack: tuple[str, ...]      # the baseline, then the tricks on, in recipe order

    @property
    def tricks(self) -> tuple[str, ...]:
        return self.stack[1:]


def chain(recipe: Recipe, step: str) -> list[str]:
    """The step's parents back to the first step, oldest first, and the step."""
    index = {s.name: i for i, s in enumerate(recipe.steps)}
    names = [step]
    while (parent := parent_step(recipe, index[names[-1]])) is not None:
        names.append(parent)
    return names[::-1]


def staircase(recipe: Recipe) -> list[Cell]:
    return [Cell(step.name, i + 1, parent_step(recipe, i), None, tuple(chain(recipe, step.name)))
            for i, step in enumerate(recipe.steps)]


def trick_sets(design: str, tricks: Sequence[str]) -> list[tuple[str, ...]]:
    """The sets of tricks a design runs, each in the order of `tricks`."""
    if design == "leave-one-out":
        return [tuple(tricks)] + [tuple(t for t in tricks if t != left) for left in tricks]
    if design == "add-one":
        return [()] + [(t,) for t in tricks]
    return [tuple(t for t in tricks if t in subset) for k in range(len(tricks) + 1) for subset in combinations(tricks, k)]


def design_cells(recipe: Recipe, design: str = "staircase", tricks: Optional[Sequence[str]] = None,
                 where: str = "recipe") -> list[Cell]:
    """The runs (before model and seed) of `design` over `tricks` (default: the last step's chain)."""
    if design not in DESIGNS:
        raise ConfigError(f"--design {design}: no such design (designs: {', '.join(DESIGNS)})")
    steps = staircase(recipe)
    if design == "staircase":
        if tricks:
            raise ConfigError("--tricks (or the recipe's tricks:): the staircase runs the recipe's steps as written; "
                              "tricks are chosen for a leave-one-out, add-one or factorial design")
        return steps
    names = [s.name for s in recipe.steps[1:]]
    for name in tricks or ():
        if name not in names:
            raise ConfigError(f"--tricks {name}: not a trick of {where} (tricks: the steps after the baseline "
                              f"'{recipe.steps[0].name}': {', '.join(names) or 'none'})")
    chosen = sorted(set(tricks), key=names.index) if tricks else list(steps[-1].tricks)
    if not chosen:
        raise ConfigError(f"--design {design}: {where} has no trick (one step only); a design compares tricks")
    base, own = recipe.steps[0], {s.name: s.set for s in recipe.steps}
    by_tricks = {c.tricks: c for c in steps}
    cells = []
    for subset in trick_sets(design, chosen):
        if subset in by_tricks:
            cells.append(by_tricks[subset])
            continue
        name = "+".join((base.name, *subset))
        if len(name) > NAME_MAX:   # a path component: its tricks are in the run's records all the same
            name = f"{name[:NAME_MAX - 9]}-{hashlib.sha256(name.encode()).hexdigest()[:8]}"
        cells.append(Cell(name, 0, base.name, tuple(own[step] for step in (base.name, *subset)), (base.name, *subset)))
    return cells


def arm_pairs(recipe: Recipe, cells: Sequence[Cell]) -> list[tuple[Cell, Cell, str]]:
    """(with, without, trick) for every two runs of a design that differ in one trick: a staircase
    step and its parent, and every set of tricks beside the same set less one of them (the arms of
    the add-one, leave-one-out and factorial contrasts)."""
    by_tricks = {c.tricks: c for c in cells}
    pairs = [(c, by_tricks[p.tricks], c.name) for c in cells if c.index and c.parent
             for p in cells if p.name == c.parent and p.tricks in by_tricks]
    for cell in cells:
        for trick in cell.tricks:
            less = tuple(t for t in cell.tricks if t != trick)
            if less in by_tricks and not (cell.index and cell.parent == by_tricks[less].name):
                pairs.append((cell, by_tricks[less], trick))
    return pairs


def beyond_the_trick(recipe: Recipe, trick: str, with_cfg, without_cfg) -> list[str]:
    """What two resolved arms differ in that is not the trick's own `set:`: each such key, and "the
    schedule's shape" where both decay by steps and their milestones sit at other fractions of their
    training (a --set of milestones on a run that a trick lengthens). A trick section that the set
    switches on (mixup, distill, ...) may differ in all its keys; a set's schedule.epochs moves the
    milestones with it (bench.config.overrides.stack_sets); milestones unused by an arm that does not
    decay by steps are no difference."""
    own = flat(next(s.set for s in recipe.steps if s.name == trick))
    sections = {k.split(".")[0] for k in own if getattr(RunConfig.model_fields.get(k.split(".")[0]), "default", 0) is None}
    allowed = set(own) | ({"schedule.milestones"} if "schedule.epochs" in own else set())
    if not with_cfg.schedule.kind == without_cfg.schedule.kind == "step":
        allowed |= STEP_ONLY
    keys = [d.split(":")[0] for d in with_cfg.differences(without_cfg)]
    extra = [k for k in keys if k not in allowed and k.split(".")[0] not in sections]
    a, b = with_cfg.schedule, without_cfg.schedule
    if a.kind == b.kind == "step" and a.epochs != b.epochs and \
            [round(m / a.epochs, 4) for m in a.milestones] != [round(m / b.epochs, 4) for m in b.milestones]:
        extra.append("the schedule's shape (step milestones at other fractions of training)")
    return extra
