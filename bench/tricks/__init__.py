"""The paper's tricks, each a small pure function with its config (None = off)."""
from bench.tricks.distill import DistillConfig, combine_distill, distill_loss, soft_cross_entropy, soft_target_entropy
from bench.tricks.efficient import EfficientConfig, autocast_dtype, param_groups, weight_dtype, zero_gamma
from bench.tricks.label_smoothing import LabelSmoothingConfig, smooth_targets
from bench.tricks.mixing import Mixing, MixingConfig
from bench.tricks.mixup import Mixup, MixupConfig, sample_mixing
from bench.tricks.schedule import lr_at

__all__ = [
    "DistillConfig", "EfficientConfig", "LabelSmoothingConfig", "Mixing", "MixingConfig",
    "Mixup", "MixupConfig", "autocast_dtype", "combine_distill", "distill_loss", "lr_at", "param_groups",
    "sample_mixing", "smooth_targets", "soft_cross_entropy", "soft_target_entropy", "weight_dtype", "zero_gamma",
]
