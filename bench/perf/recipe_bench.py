"""`bench-recipe`: training images/s of a recipe's own runs (its model, its data set, its loader,
the harness's `train_epoch`) under variants of its settings, each a set of `--set` overrides:
a larger batch (the recipe's lr is per 256 images, so the linear-scaling rule comes with it),
the thread budget, `torch.compile`, the precision, the memory format.

Every variant of every selected run is built as a real run would be (`setup`: data, model,
optimizer, a teacher of random weights for a distillation run) and timed in interleaved rounds
like `bench`, each round about `images` training images, after a warm-up round.
"""
from __future__ import annotations

import dataclasses
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch

from bench.ablation.plan import RunSpec, plan
from bench.config import Recipe
from bench.engine.training import setup
from bench.errors import ConfigError
from bench.perf.throughput import BenchSettings, epoch_runner, time_rounds

Overrides = tuple[tuple[str, Any], ...]


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    overrides: Overrides = ()

    def label(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.overrides) or "as in the recipe"


def _runs(recipe: Recipe, select: dict, overrides: Overrides, images: int, where: str) -> list[RunSpec]:
    """The selected runs with `overrides`, each epoch cut to about `images` training images."""
    specs = plan(recipe, overrides=overrides, where=where, **select)
    out = []
    for spec in specs:
        batch = spec.config.data.global_batch_size
        data = spec.config.data.model_copy(update={"max_train_batches": max(1, round(images / batch))})
        out.append(dataclasses.replace(spec, config=spec.config.model_copy(update={"data": data})))
    return out


def measure_recipe(recipe: Recipe, variants: Sequence[Variant], *, select: dict, base: Overrides = (),
                   images: int = 10240, rounds: int = 3, where: str = "recipe",
                   progress: Callable[[str], None] = lambda msg: None) -> dict:
    """Images/s of every selected run under every variant (the first is the reference)."""
    if images < 1 or rounds < 1:
        raise ConfigError(f"bench-recipe --images {images}, --rounds {rounds}: must be at least 1")
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise ConfigError(f"bench-recipe --variant: names repeat ({', '.join(names)})")
    by_variant = {v.name: _runs(recipe, select, base + v.overrides, images, where) for v in variants}
    runners, meta = {}, {}
    for v in variants:
        for spec in by_variant[v.name]:
            teacher = None
            if spec.config.distill is not None:
                teacher = (next(s.config for s in by_variant[v.name] if s.path == spec.teacher_path)
                           if spec.teacher_path else spec.teacher_config, None)   # random weights: timing only
            key = f"{spec.path.parent}/{v.name}"
            progress(f"building {key}")
            t = setup(spec.config, teacher)
            runners[key] = epoch_runner(t, t.runtime["threads"])
            meta[key] = {"run": str(spec.path.parent), "variant": v.name, "overrides": v.label(),
                         "batch_size": spec.config.data.global_batch_size, "lr": spec.config.peak_lr(),
                         "threads": t.runtime["threads"], "images_per_round": len(t.data.train) * spec.config.data.global_batch_size}
    progress(f"timing {len(runners)} variants: a warm-up round each, then {rounds} rounds of about {images} images")
    timed = time_rounds(runners, BenchSettings(steps=1, rounds=rounds, warmup_steps=1), torch.device("cpu"))
    rows = {}
    for key, m in meta.items():
        ips = [m["images_per_round"] / x for x in timed[key]["times_s"]]
        ref = timed[f"{m['run']}/{variants[0].name}"]["times_s"]
        ref_images = meta[f"{m['run']}/{variants[0].name}"]["images_per_round"]
        rows[key] = {**m, "images_per_s": statistics.median(ips), "images_per_s_min": min(ips),
                     "images_per_s_max": max(ips),
                     "ratio_to_first": statistics.median((m["images_per_round"] / x) / (ref_images / r)
                                                         for x, r in zip(timed[key]["times_s"], ref))}
    return {"recipe": recipe.name, "images_per_round": images, "rounds": rounds,
            "variants": [dataclasses.asdict(v) for v in variants], "results": rows}


def format_recipe_bench(r: dict) -> str:
    lines = [f"{r['recipe']}: median of {r['rounds']} rounds of about {r['images_per_round']} training images",
             "", "| run | variant | overrides | batch | lr | threads | images/s (min-max) | ratio to first |",
             "|---|---|---|---|---|---|---|---|"]
    for v in r["results"].values():
        lines.append(f"| {v['run']} | {v['variant']} | {v['overrides']} | {v['batch_size']} | {v['lr']:.4g} | {v['threads']} "
                     f"| {v['images_per_s']:.0f} ({v['images_per_s_min']:.0f}-{v['images_per_s_max']:.0f}) "
                     f"| {v['ratio_to_first']:.2f} |")
    return "\n".join(lines)
