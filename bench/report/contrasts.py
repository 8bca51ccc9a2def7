"""The contrast engine: every Δ, interval, p-value, power figure, test-set noise and family-wise
correction of the report comes from here, over one tidy frame of finished runs.

A contrast is Σ cᵢ × (a set of tricks' top-1), taken within each seed over the seeds all its
sets have: a staircase step against its parent (+1, −1), a design's add-one or leave-one-out, a
factorial's main effect or interaction (±1/2^(k−1) over its 2^k cells). Its seed-paired mean has
a two-sided t-interval and p-value over the seeds; its test-set noise is that of the same
contrast over the evaluation images the runs share (each run's `val_correct.npy`), with
McNemar's exact test where it has two arms. A table's rows are one family: `holm` adjusts their
p-values together, and "detected" means after that adjustment.
"""
from __future__ import annotations

import math
from itertools import combinations
from typing import Optional

import numpy as np
import pandas as pd
from scipy import stats as scipy_stats

from bench.config import RunConfig
from bench.config.schema import STEP_ONLY, experiment_key
from bench.report.power import detectable_delta
from bench.runs.rundir import CONFIG_PREFIX
from bench.strict import flat

Terms = tuple[tuple[float, frozenset], ...]   # (coefficient, the tricks on) per cell


# ---- the tidy frame -------------------------------------------------------------------------

def stacks(runs: pd.DataFrame) -> pd.Series:
    """Every student's `stack` ("efficient+cosine+..."): recorded, or for a staircase run that
    predates the record, its step's chain through `parent_step` (the first step: itself)."""
    stack = runs["stack"].copy() if "stack" in runs else pd.Series(None, index=runs.index, dtype=object)
    steps = runs[runs["role"] == "student"].drop_duplicates(["model", "step"]).set_index(["model", "step"])["parent_step"]

    def chain(model: str, step: str) -> Optional[str]:
        names = [step]
        while isinstance(parent := steps.get((model, names[-1])), str):
            if (model, parent) not in steps.index or len(names) > len(steps):
                return None
            names.append(parent)
        return "+".join(names[::-1])

    missing = stack.isna() & (runs["role"] == "student")
    stack[missing] = [chain(m, s) for m, s in zip(runs.loc[missing, "model"], runs.loc[missing, "step"])]
    return stack


def device_hours(runs: pd.DataFrame) -> tuple[pd.Series, pd.Series]:
    """Each run's device time in hours and where it comes from: `device_time_s` as the run
    recorded it (a CPU's process time, an accelerator's wall time × devices), else, for a run
    recorded before that, its wall clock × `world_size` ("wall clock": on a shared machine that
    includes other jobs' time). A run that distils is charged an even share of its teacher's,
    split over the runs of the folder that distil from it."""
    world = runs["world_size"].fillna(1).astype(float) if "world_size" in runs else 1.0
    recorded = pd.to_numeric(runs.get("device_time_s", pd.Series(np.nan, index=runs.index)), errors="coerce")
    own = recorded.where(recorded.notna(), pd.to_numeric(runs["train_time_s"], errors="coerce") * world) / 3600
    basis = runs.get("device_time_from", pd.Series(None, index=runs.index, dtype=object)).where(recorded.notna(), "wall clock")
    teachers = runs["role"] == "teacher"
    by_path = dict(zip(runs.loc[teachers, "path"], own[teachers]))
    pupils = runs.loc[~teachers, "teacher"].value_counts()
    share = [by_path.get(t, 0.0) / pupils[t] if isinstance(t, str) and t in pupils and not is_teacher else 0.0
             for t, is_teacher in zip(runs["teacher"], teachers)]
    return own + np.array(share), basis


def tidy(runs: pd.DataFrame) -> pd.DataFrame:
    """The students' and design runs' rows the contrasts read: the runs' columns (model, seed,
    top1, top5, val_loss, path, config.*) with `stack`, `tricks` (the frozenset of the tricks on
    after the baseline), `device_h`, `cost_basis` and `machine`; a run whose stack cannot be told
    is left out."""
    runs = runs.assign(**{c: None for c in ("path", "teacher", "train_time_s", "world_size", "parent_step")
                          if c not in runs})
    hours, basis = device_hours(runs)
    out = runs.assign(stack=stacks(runs), device_h=hours, cost_basis=basis,
                      machine=runs["machine"] if "machine" in runs else None)
    out = out[(out["role"] != "teacher") & out["stack"].notna()]
    out = out.assign(tricks=[frozenset(str(s).split("+")[1:]) for s in out["stack"]])
    return out.reset_index(drop=True)


# ---- one contrast ---------------------------------------------------------------------------

def t_summary(d: np.ndarray, confidence: float = 0.95) -> dict:
    """The mean of per-seed contrasts `d`, its two-sided t-interval and p-value (n ≥ 2; with no
    spread the interval is the mean itself and p is 0, or 1 for a mean of 0)."""
    row = {"n_pairs": len(d), "delta": float(d.mean()) if len(d) else math.nan, "low": math.nan, "high": math.nan, "p": math.nan}
    if len(d) >= 2 and d.std() == 0:
        row.update(low=row["delta"], high=row["delta"], p=float(row["delta"] == 0))
    elif len(d) >= 2:
        test = scipy_stats.ttest_1samp(d, 0.0)
        row.update(zip(("low", "high"), test.confidence_interval(confidence)), p=float(test.pvalue))
    return row


def welch(a: np.ndarray, b: np.ndarray, confidence: float = 0.95) -> tuple[float, float, float, float]:
    """mean(b) − mean(a), its two-sided Welch t-interval and p-value over unpaired values (NaN
    with fewer than 2 a side); with no spread on either side the interval is the difference."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    diff = b.mean() - a.mean() if len(a) and len(b) else math.nan
    if len(a) < 2 or len(b) < 2:
        return diff, math.nan, math.nan, math.nan
    if a.std() == b.std() == 0:
        return diff, diff, diff, float(diff == 0)
    test = scipy_stats.ttest_ind(b, a, equal_var=False)
    return (diff, *map(float, test.confidence_interval(confidence)), float(test.pvalue))


def test_set_noise(correct: list[list[np.ndarray]], coefs: list[float]) -> tuple[float, float]:
    """The contrast's noise from the evaluation images alone: per seed, the per-image contrast
    Σ c·right (right: 1 or 0 per image, the same images in every arm); the s.e. (points) of its
    mean over images and seeds, and, for two arms (+1, −1), McNemar's exact two-sided p over
    the discordant images of every seed pooled (under no difference, each is as likely to go
    either way). `correct[s][i]`: seed s, arm i. (nan, nan) without them."""
    if not correct:
        return math.nan, math.nan
    per_image = [sum(c * arms[i].astype(float) for i, c in enumerate(coefs)) for arms in correct]
    se = 100 * math.sqrt(sum(v.var(ddof=1) / len(v) for v in per_image)) / len(per_image)
    p = math.nan
    if sorted(coefs) == [-1.0, 1.0]:
        pos, neg = coefs.index(1.0), coefs.index(-1.0)
        b = sum(int((arms[pos] & ~arms[neg]).sum()) for arms in correct)
        c = sum(int((~arms[pos] & arms[neg]).sum()) for arms in correct)
        p = scipy_stats.binomtest(b, b + c).pvalue if b + c else 1.0
    return se, float(p)


def contrast(cells: dict[frozenset, pd.DataFrame], terms: Terms, correct: dict[str, np.ndarray],
             confidence: float = 0.95) -> dict:
    """One contrast over `cells` (tricks → that set's runs indexed by seed: top1, device_h,
    cost_basis, machine, path): its seed-paired Δ top-1 with interval and p, its test-set noise
    (where every run has its per-image file, of one length), and the device-hours it adds with
    their interval."""
    seeds = sorted(set.intersection(*(set(cells[s].index) for _, s in terms)))
    value = lambda col: np.array([sum(c * float(cells[s].at[seed, col]) for c, s in terms) for seed in seeds])
    top1, cost = t_summary(value("top1"), confidence), t_summary(value("device_h"), confidence)
    files = [[correct.get(cells[s].at[seed, "path"]) for _, s in terms] for seed in seeds]
    whole = seeds and all(f is not None for arms in files for f in arms) and \
        len({len(f) for arms in files for f in arms}) == 1
    se, p_mcnemar = test_set_noise(files if whole else [], [c for c, _ in terms])
    runs = pd.concat([cells[s].loc[seeds] for _, s in terms])
    bases = sorted({f"{b} on {m if isinstance(m, str) else 'an unrecorded machine'}"
                    for b, m in zip(runs["cost_basis"].astype(str), runs["machine"])})
    return {"per_seed": value("top1"), "n_pairs": top1["n_pairs"], "delta_top1": top1["delta"], "ci_low": top1["low"], "ci_high": top1["high"],
            "p": top1["p"], "test_se": se, "p_mcnemar": p_mcnemar, "extra_device_h": cost["delta"],
            "extra_low": cost["low"], "extra_high": cost["high"], "cost_basis": "; ".join(bases)}


def holm(p: pd.Series) -> pd.Series:
    """Holm's step-down adjustment of a family of p-values (NaN rows are not in the family):
    the i-th smallest of m becomes max over j ≤ i of min(1, (m − j + 1)·p₍ⱼ₎)."""
    known = p.dropna().sort_values()
    m = len(known)
    adjusted = np.maximum.accumulate(np.minimum(1.0, (m - np.arange(m)) * known.to_numpy(float))) if m else []
    return pd.Series(adjusted, index=known.index, dtype=float).reindex(p.index)


def pooled_sd(contrasts: list[np.ndarray]) -> tuple[float, int]:
    """The std of a per-seed contrast pooled over `contrasts` (variances weighted by their degrees
    of freedom) and those degrees of freedom; (nan, 0) where none has 2 seeds."""
    ss_dof = [(d.var(ddof=1) * (len(d) - 1), len(d) - 1) for d in contrasts if len(d) >= 2]
    dof = sum(k for _, k in ss_dof)
    return (math.sqrt(sum(ss for ss, _ in ss_dof) / dof), dof) if dof else (math.nan, 0)


def binomial_se(top1: float, n: int) -> float:
    """The binomial s.e. (points) of one top-1 (%) measured on n images, p kept within [1/n, 1 − 1/n]."""
    p = min(max(top1 / 100, 1 / n), 1 - 1 / n)
    return 100 * math.sqrt(p * (1 - p) / n)


# ---- the contrasts a folder's runs allow ----------------------------------------------------

def factorial_terms(tricks: tuple[str, ...], effect: tuple[str, ...]) -> Terms:
    """A 2^k factorial's main effect (one trick) or two-way interaction (two): each subset's sign
    is the product of ±1 for the effect's tricks on/off, over 2^(k−1)."""
    k, terms = len(tricks), []
    for r in range(k + 1):
        for subset in combinations(tricks, r):
            sign = math.prod(1 if t in subset else -1 for t in effect)
            terms.append((sign / 2 ** (k - 1), frozenset(subset)))
    return tuple(terms)


def largest_factorial(cells, tricks: set[str]) -> tuple[str, ...]:
    """The largest set of ≥ 2 tricks (first in name order among equals) whose every subset has runs."""
    for k in range(len(tricks), 1, -1):
        for chosen in combinations(sorted(tricks), k):
            if all(frozenset(s) in cells for r in range(k + 1) for s in combinations(chosen, r)):
                return chosen
    return ()


def design_contrasts(cells, steps: list[tuple[str, frozenset, frozenset]]) -> list[tuple[str, str, Terms, list]]:
    """(design, effect, terms, arm pairs) of every effect the cells allow; `steps`: each staircase
    step's name, its tricks and its parent's. An arm pair (with, without) is two cells that differ
    in the effect's tricks alone: what the contrast changes is what they differ in."""
    found = [("staircase", name, ((1.0, own), (-1.0, parent)), [(own, parent)]) for name, own, parent in steps
             if own in cells and parent in cells]
    tricks, none = set().union(*cells), frozenset()
    found += [("add-one", t, ((1.0, frozenset({t})), (-1.0, none)), [(frozenset({t}), none)]) for t in sorted(tricks)
              if none in cells and frozenset({t}) in cells]
    # the full stack: the set of tricks with the most of its leave-one-outs there (then the larger)
    left = {s: [t for t in sorted(s) if s - {t} in cells] for s in cells}
    full = max(cells, key=lambda s: (len(left[s]), len(s), sorted(s)))
    if len(left[full]) >= 2:   # one leave-one-out alone is a staircase step or an add-one
        found += [("leave-one-out", t, ((1.0, full), (-1.0, full - {t})), [(full, full - {t})]) for t in left[full]]
    chosen = largest_factorial(cells, tricks)
    pairs = lambda effect: [(s, s - {t}) for t in effect for _, s in factorial_terms(chosen, (t,)) if t in s]
    found += [("factorial", t, factorial_terms(chosen, (t,)), pairs((t,))) for t in chosen]
    found += [("factorial", f"{a} × {b}", factorial_terms(chosen, (a, b)), pairs((a, b)))
              for a, b in combinations(chosen, 2)]
    return found


def differing_keys(configs: dict[frozenset, dict], pairs: list) -> str:
    """The resolved settings (config keys) in which the arms of any pair differ; a key a run
    recorded before it existed counts as its default (`bench.strict`: a new key keeps the old
    behaviour), and milestones unused by a cosine arm beside a step arm are no difference (as `plan`)."""
    defaults = flat(RunConfig().model_dump(mode="json"))
    value = lambda cfg, k: str(defaults.get(k) if _missing(cfg.get(k)) else cfg.get(k))
    keys = set()
    for a, b in pairs:
        ca, cb = configs[a], configs[b]
        differ = {k for k in ca.keys() | cb.keys() if value(ca, k) != value(cb, k)}
        if not value(ca, "schedule.kind") == value(cb, "schedule.kind") == "step":
            differ -= STEP_ONLY
        keys |= differ
    return ", ".join(sorted(keys))


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def model_contrasts(group: pd.DataFrame, correct: dict[str, np.ndarray], confidence: float = 0.95) -> pd.DataFrame:
    """Every distinct contrast one model's tidy runs allow, each once: a contrast two designs ask
    for (a staircase step that is also an add-one) is one row of the first, `also` naming the other."""
    cells = {tricks: g.drop_duplicates("seed").set_index("seed") for tricks, g in group.groupby("tricks")}
    keys = [c[len(CONFIG_PREFIX):] for c in group.columns if c.startswith(CONFIG_PREFIX)]
    config_cols = [CONFIG_PREFIX + k for k in keys if experiment_key(k) and k != "seed"]   # the seed pairs the arms
    configs = {t: {c[len(CONFIG_PREFIX):]: g[c].iloc[0] for c in config_cols} for t, g in cells.items()}
    by_step = group[group["role"] == "student"].drop_duplicates("step").set_index("step")
    steps = [(name, row["tricks"], by_step.at[row["parent_step"], "tricks"]) for name, row in by_step.iterrows()
             if isinstance(row["parent_step"], str) and row["parent_step"] in by_step.index]
    rows, seen = [], {}
    for design, effect, terms, pairs in design_contrasts(cells, steps):
        key = frozenset((c, s) for c, s in terms)
        if key in seen:
            seen[key]["also"] = " = ".join(filter(None, [seen[key]["also"], design]))
            continue
        row = {"design": design, "also": "", "effect": effect, "terms": terms, **contrast(cells, terms, correct, confidence),
               "differs": differing_keys(configs, pairs)}
        seen[key] = row
        rows.append(row)
    return pd.DataFrame(rows)


def effects(runs: pd.DataFrame, correct: Optional[dict[str, np.ndarray]] = None, confidence: float = 0.95,
            designs: Optional[tuple[str, ...]] = None) -> pd.DataFrame:
    """One row per (model, distinct contrast) the runs allow (`designs`: only those of these
    designs, by the first that asks for it), with its minimum detectable effect at 80 % power (the sd of a
    per-seed contrast pooled over its design's contrasts), the family's Holm-adjusted p and
    whether it is detected after that."""
    frame = tidy(runs)
    parts = []
    for model, group in frame.groupby("model", sort=True):
        found = model_contrasts(group, correct or {}, confidence)
        if found.empty:
            continue
        if designs is not None:
            found = found[found["design"].isin(designs)]
        sds = {d: pooled_sd(list(g["per_seed"]))[0] for d, g in found.groupby("design")}
        found = found.assign(model=model, sd=found["design"].map(sds))
        found["mde"] = [detectable_delta(n, sd, confidence=confidence) if n >= 2 and sd == sd and sd > 0 else math.nan
                        for n, sd in zip(found["n_pairs"], found["sd"])]
        parts.append(found)
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=EFFECT_COLUMNS + ["terms", "per_seed"])
    out["p_holm"] = holm(out["p"].astype(float))
    out["detected"] = out["p_holm"] < 1 - confidence
    two_arms = out["terms"].map(len) == 2 if len(out) else pd.Series(dtype=bool)
    one_basis = ~out["cost_basis"].astype(str).str.contains(";")
    costly = two_arms & one_basis & (out["extra_low"] > 0)   # a gain per device-hour only for a cost that is there
    out["delta_per_device_h"] = (out["delta_top1"] / out["extra_device_h"]).where(costly)
    return out


EFFECT_COLUMNS = ["model", "design", "also", "effect", "n_pairs", "delta_top1", "ci_low", "ci_high", "p", "p_holm", "detected",
                  "test_se", "p_mcnemar", "sd", "mde", "extra_device_h", "extra_low", "extra_high", "delta_per_device_h",
                  "cost_basis", "differs"]

