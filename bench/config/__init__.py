"""Configuration: a recipe file → one validated `RunConfig` per (model, step, seed)."""
from bench.config.overrides import apply_override, parse_override, smoke_config, with_bare_overrides
from bench.config.recipe import Recipe, check_recipe, load_recipe, model_names, resolve_step, resolve_teacher
from bench.config.schema import DataConfig, ModelConfig, RunConfig, RuntimeConfig, WandbConfig, schedule_for, tricks_on
from bench.config.validation import validate

__all__ = ["DataConfig", "ModelConfig", "Recipe", "RunConfig", "RuntimeConfig", "WandbConfig", "apply_override", "check_recipe",
           "load_recipe", "model_names", "parse_override", "resolve_step", "resolve_teacher",
           "schedule_for", "smoke_config", "tricks_on", "validate", "with_bare_overrides"]
