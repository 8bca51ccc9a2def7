"""An ablation: plan a recipe into ordered runs, execute them (locks, skip, resume), launch them
locally, with torchrun or on SLURM, follow their status, mirror each run to W&B."""
from bench.ablation.execute import RunsFailed, run_ablation
from bench.ablation.plan import RunSpec, plan

__all__ = ["RunSpec", "RunsFailed", "plan", "run_ablation"]
