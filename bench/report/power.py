"""Power of the seed-paired t-test (bench.report.contrasts): the seeds a Δ needs, the Δ a number
of seeds can find, and what `plan --detect` says."""
from __future__ import annotations

import math

from scipy import optimize
from scipy import stats as scipy_stats


def paired_power(delta: float, sd: float, n: int, confidence: float = 0.95) -> float:
    """P(a two-sided paired t-test over n seeds rejects Δ = 0) when the true Δ is `delta` and a
    per-seed Δ has std `sd`: the non-central t with n − 1 degrees of freedom and non-centrality
    delta·√n / sd beyond the critical value."""
    crit = scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)
    nc = abs(delta) * math.sqrt(n) / sd
    upper, lower = scipy_stats.nct.sf(crit, n - 1, nc), scipy_stats.nct.cdf(-crit, n - 1, nc)
    # scipy's non-central t gives NaN far in a tail: the lower one from nc ≈ 8 on, where
    # P(T < −crit) ≤ P(Z < −nc) < 1e-14 (T < −crit needs Z + nc < 0)
    lower = 0.0 if math.isnan(lower) else lower
    if math.isnan(upper):
        return 1.0 if nc > crit else math.nan
    return float(upper + lower)


def seeds_to_detect(delta: float, sd: float, power: float = 0.8, confidence: float = 0.95, most: int = 10_000) -> int:
    """The fewest seeds per step (paired with its parent's) for `paired_power` ≥ `power`."""
    n = 2
    while paired_power(delta, sd, n, confidence) < power:
        n += 1
        if n > most:
            raise ValueError(f"more than {most} seeds")
    return n


def detectable_delta(n: int, sd: float, power: float = 0.8, confidence: float = 0.95) -> float:
    """The minimum detectable effect: the Δ that n paired seeds find with probability `power`."""
    crit = scipy_stats.t.ppf(0.5 + confidence / 2, n - 1)   # at non-centrality 4·crit + 10, power ≥ 0.99999
    return float(optimize.brentq(lambda d: paired_power(d, sd, n, confidence) - power, 1e-9 * sd,
                                 (4 * crit + 10) * sd / math.sqrt(n)))


def seeds_sentence(delta: float, sd: float, dof: int, seeds: int, source: str) -> str:
    """What `plan --detect` says: the seeds per step that find `delta` at 80 % power, and the Δ the
    planned seeds can find."""
    have = (f"the {seeds} seeds planned detect {detectable_delta(seeds, sd):.2f}" if seeds >= 2
            else "the 1 seed planned has no interval")
    return (f"To detect Δ top-1 = {delta:g} at 80 % power (two-sided paired t at 95 %): {seeds_to_detect(delta, sd)} "
            f"seeds per step; {have}. Seed noise from {source}: a step's Δ varies between seeds with std {sd:.2f} "
            f"points (pooled over its steps, {dof} degrees of freedom).")
