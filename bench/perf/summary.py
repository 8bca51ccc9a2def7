"""The benchmark's result: per-variant images/s and ratios (paired per round), the costs of
distillation and of the NaN check, and which targets are met."""
from __future__ import annotations

import resource
import statistics
from dataclasses import asdict

from bench.config import RuntimeConfig
from bench.runs.environment import env_info


def _median_ratio(a: list[float], b: list[float]) -> float:
    """Median over rounds of time(b) / time(a): the throughput of a relative to b."""
    return statistics.median(tb / ta for ta, tb in zip(a, b))


def summarize(s, device, timed: dict, flops: int, peak: float, loader_ips: float) -> dict:
    variants = {}
    for name, t in timed.items():
        ips = [s.steps * s.batch_size / x for x in t["times_s"]]
        variants[name] = {
            "images_per_s": statistics.median(ips), "images_per_s_min": min(ips), "images_per_s_max": max(ips),
            "step_time_s": statistics.median(t["times_s"]) / s.steps,
            "ratio_to_plain": _median_ratio(t["times_s"], timed["plain"]["times_s"]),
            "ratio_to_pytorch": _median_ratio(t["times_s"], timed["pytorch"]["times_s"]),
            "peak_mem_mib": t["peak_mem_mib"]}
    step_s = variants["plain"]["step_time_s"]
    extra = [(d - p) / s.steps for d, p in zip(timed["distill"]["times_s"], timed["plain"]["times_s"])]
    check_s = nan_check_s(s.steps, timed["nan_check_every_step"]["times_s"], timed["plain"]["times_s"])
    every = RuntimeConfig.model_fields["nan_check_steps"].default
    r = {
        "settings": asdict(s), "environment": env_info(device), "variants": variants,
        "train_flop_per_step": flops, "achieved_flop_per_s": flops / step_s, "matmul_peak_flop_per_s": peak,
        "flop_utilization": flops / step_s / peak,
        "loader_images_per_s": loader_ips, "loader_ratio_to_step": loader_ips / variants["plain"]["images_per_s"],
        "distill_extra_s_per_step": statistics.median(extra),
        "teacher_forward_s_per_step": variants["teacher_forward"]["step_time_s"],
        "nan_check_s_per_check": check_s, "nan_check_steps_default": every,
        "nan_check_cost_at_default": None if check_s is None else max(check_s, 0.0) / every / step_s,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }
    v = variants
    r["targets_met"] = {
        "harness_within_3pct_of_pytorch": v["plain"]["ratio_to_pytorch"] >= 0.97,
        "label_smoothing_under_2pct": v["label_smoothing"]["ratio_to_plain"] >= 0.98,
        "mixup_under_2pct": v["mixup"]["ratio_to_plain"] >= 0.98,
        "distill_at_most_teacher_forward": r["distill_extra_s_per_step"] <= 1.02 * r["teacher_forward_s_per_step"],
        "loader_at_least_1_5x_step": r["loader_ratio_to_step"] >= 1.5,
        "nan_check_under_1pct_at_default": check_s is None or r["nan_check_cost_at_default"] < 0.01,
    }
    return r


def nan_check_s(steps: int, every_step: list[float], plain: list[float]):
    """Seconds one NaN check adds (its device sync): the median over rounds of the extra time of
    checking after every step, over the `steps` − 1 checks that the plain variant does not make
    (both check at the epoch's end); None with one step a round."""
    if steps < 2:
        return None
    return statistics.median((e - p) / (steps - 1) for e, p in zip(every_step, plain))
