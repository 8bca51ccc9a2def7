"""Configuration: a recipe file → one validated `RunConfig` per (model, step, seed)."""
from bench.config.overrides import apply_override, deep_merge, parse_override, smoke_config, with_bare_overrides
from bench.config.recipe import (
                                 Recipe,
                                 StepSpec,
                                 TeacherSpec,
                                 Variant,
                                 check_recipe,
                                 load_recipe,
                                 model_names,
                                 resolve_step,
                                 resolve_teacher,
)
from bench.config.schema import (
                                 DataConfig,
                                 ModelConfig,
                                 OptimConfig,
                                 RunConfig,
                                 RuntimeConfig,
                                 ScheduleConfig,
                                 WandbConfig,
                                 schedule_for,
                                 tricks_on,
)
from bench.config.validation import format_validation, validate

__all__ = [
    "DataConfig", "ModelConfig", "OptimConfig", "Recipe", "RunConfig", "RuntimeConfig", "ScheduleConfig", "StepSpec",
    "TeacherSpec", "Variant", "WandbConfig", "apply_override", "check_recipe", "deep_merge", "format_validation",
    "load_recipe", "model_names", "parse_override", "resolve_step", "resolve_teacher", "schedule_for", "smoke_config",
    "tricks_on", "validate", "with_bare_overrides",
]
