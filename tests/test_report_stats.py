"""The report's statistics and drawing on hand-made runs: logit gaps, seed-paired Δ intervals, the
paper's own Δ, the staircase's branches and axis, the curves' panels."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np
import pandas as pd
import pytest
import torch

from bench.engine import logit_gaps
from bench.errors import BenchError
from bench.report import compare, contrasts, frames, power, staircase, stats, tables
from bench.report import figures as plots


def test_logit_gap_is_max_minus_mean_of_the_others():
    logits = torch.tensor([[3.0, 1.0, -1.0], [0.0, 0.0, 6.0]])
    assert logit_gaps(logits).tolist() == pytest.approx([3.0, 6.0])


def test_theoretical_gap_matches_the_paper():
    assert plots.logit_gap_theory(0.1, 1000) == pytest.approx(math.log(999 * 0.9 / 0.1))
    assert float(plots.logit_gap_theory(0.1, 1000)) == pytest.approx(9.1, abs=0.05)   # paper, Section 5.2
    assert float(plots.logit_gap_theory(0.5, 2)) == pytest.approx(0.0)


def _synthetic(top1: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for i, (step, values) in enumerate(top1.items(), start=1):
        for seed, v in enumerate(values):
            rows.append({"model": "m", "role": "student", "step": step, "step_index": i,
                         "parent_step": list(top1)[i - 2] if i > 1 else None, "seed": seed, "top1": v,
                         "top5": 99.0, "paper_table": None, "paper_model": None, "path": f"m/{i}/seed{seed}"})
    return frames.runs_frame(rows)


def test_paired_interval_uses_t_quantiles_over_seed_differences():
    df = _synthetic({"a": [50.0, 60.0, 70.0], "b": [51.0, 62.0, 70.0], "c": [61.0, 72.0, 80.0]})
    d = stats.staircase_deltas(df).set_index("step")
    diffs = np.array([1.0, 2.0, 0.0])
    half = 4.302653 * diffs.std(ddof=1) / math.sqrt(3)    # t(0.975, 2 dof)
    assert d.loc["b", "delta_top1"] == pytest.approx(1.0)
    assert (d.loc["b", "ci_low"], d.loc["b", "ci_high"]) == pytest.approx((1.0 - half, 1.0 + half), rel=1e-5)
    assert not d.loc["b", "detected"]               # seed noise swamps +1
    assert d.loc["c", "detected"] and d.loc["c", "ci_low"] == pytest.approx(10.0)  # +10 on every seed
    assert "+10.00 [+10.00, +10.00]*" in tables.table_markdown(stats.ablation_table(df))


def test_a_step_whose_interval_contains_zero_reads_not_detected_with_its_half_width():
    df = _synthetic({"a": [50.0, 60.0, 70.0], "b": [51.0, 62.0, 70.0], "c": [53.0, 64.0, 72.5]})
    half = 4.302653 * np.array([1.0, 2.0, 0.0]).std(ddof=1) / math.sqrt(3)     # b: +1 [-1.48, +3.48]
    half_c = 4.302653 * np.array([2.0, 2.0, 2.5]).std(ddof=1) / math.sqrt(3)   # c: +2.17, every seed up
    (line,) = tables.findings(stats.ablation_table(df))
    assert line == (f"m, Δ top-1, Holm-adjusted at 0.05 over the table's steps: detected: c +2.17 (±{half_c:.2f}); "
                    f"not detected: b (±{half:.2f}).")
    assert line in tables.table_markdown(stats.ablation_table(df))
    one = _synthetic({"a": [50.0], "b": [51.0]})
    assert tables.findings(stats.ablation_table(one)) == ["m, Δ top-1, Holm-adjusted at 0.05 over the table's steps: "
                                                          "one seed, no interval: b."]


def test_paper_tables_2_to_6_load_in_long_form():
    for table in ("table2", "table3", "table4", "table5", "table6"):
        paper = frames.load_paper(table)
        assert {"table", "step", "model", "top1", "top5"} <= set(paper.columns) and (paper["table"] == table).all()
    t6 = frames.load_paper("table6").set_index(["model", "step"])
    assert len(t6) == 18 and t6.loc[("inception_v3", "distill_mixup"), "top1"] == 78.34
    assert frames.load_paper("table4").query("batch_size == 1024 and step == 'zero_gamma'")["top1"].item() == 76.37
    with pytest.raises(BenchError, match="table9"):
        frames.load_paper("table9")


def _runs(top1: dict[str, dict[int, float]], parents: Optional[dict[str, str]] = None, **columns) -> pd.DataFrame:
    """Student runs: {step: {seed: top-1}}, each step on the previous one unless `parents` says."""
    rows = []
    for i, (step, by_seed) in enumerate(top1.items(), start=1):
        parent = (parents or {}).get(step, list(top1)[i - 2] if i > 1 else None)
        rows += [{"model": "m", "role": "student", "step": step, "step_index": i, "parent_step": parent, "seed": seed,
                  "top1": v, "top5": 99.0, "paper_table": None, "paper_model": None, "path": f"m/{i}/seed{seed}",
                  **columns} for seed, v in by_seed.items()]
    return frames.runs_frame(rows)


def test_delta_is_over_the_seeds_both_steps_have():
    """`--only a b --seeds 0 1` on top of a seed-0 run: c's Δ is its seed 0 minus b's seed 0,
    not its one seed minus b's two-seed mean; n is shown per step, and the Δ's n where it differs."""
    df = _runs({"a": {0: 50.0}, "b": {0: 52.0, 1: 60.0}, "c": {0: 53.0}})
    st = stats.step_stats(df).set_index("step")
    assert st.loc["c", "delta_top1"] == pytest.approx(1.0) and st.loc["c", "n_pairs"] == 1   # not 53 − 56
    assert st.loc["b", "delta_top1"] == pytest.approx(2.0) and st.loc["b", "n_pairs"] == 1   # not 56 − 50
    md = tables.table_markdown(stats.ablation_table(df))
    assert "| b | 2 | 56.00 ± 5.66 | +2.00 (n=1) |" in md and "| c | 1 | 53.00 | +1.00 |" in md
    assert "each row's n seeds" in md
    none = tables.table_markdown(stats.ablation_table(_runs({"a": {0: 50.0}, "b": {1: 52.0}})))
    assert "| b | 1 | 52.00 | – (no common seed) |" in none


def test_the_paper_column_shows_the_papers_own_delta_never_ours_minus_theirs():
    steps = {"efficient": {0: 98.0}, "cosine": {0: 97.0}, "label_smoothing": {0: 99.0}, "mixup": {0: 98.5}}
    paper = {"paper_table": "table6", "paper_model": "resnet50d"}
    digits = _runs(steps, {"mixup": "label_smoothing"}, **paper, **{"config.data.dataset": "digits"})
    st = stats.step_stats(digits).set_index("step")
    assert st.loc["cosine", "paper_delta_top1"] == pytest.approx(77.91 - 77.16)
    assert st.loc["mixup", "paper_delta_top1"] == pytest.approx(79.15 - 78.31)   # the same two steps as ours
    assert st["vs_paper_top1"].isna().all()
    md = tables.table_markdown(stats.ablation_table(digits))
    assert "| cosine | 1 | 97.00 | -1.00 | +0.75 | 99.00 | 77.91 | 93.81 |" in md
    assert "(+19" not in md and "(+2" not in md and "− paper" not in md and "another data set" in md
    imagenet = _runs(steps, **paper, **{"config.data.dataset": "imagenet"})
    assert "| ours − paper top-1 |" in tables.table_markdown(stats.ablation_table(imagenet))
    assert stats.step_stats(imagenet).set_index("step").loc["cosine", "vs_paper_top1"] == pytest.approx(97.0 - 77.91)


DEFAULT_STEPS = {"efficient": {0: 354 / 3.59}, "cosine": {0: 351 / 3.59}, "label_smoothing": {0: 355 / 3.59},
                 "distill": {0: 357 / 3.59}, "mixup": {0: 352 / 3.59, 1: 354 / 3.59}, "distill_mixup": {0: 357 / 3.59}}
DEFAULT_PARENTS = {"mixup": "label_smoothing", "distill_mixup": "mixup"}


def test_staircase_branches_siblings_from_their_parent():
    df = _runs(DEFAULT_STEPS, DEFAULT_PARENTS)
    segments = staircase.staircase_segments(stats.step_stats(df))
    assert ("m", "label_smoothing", "mixup") in segments and ("m", "label_smoothing", "distill") in segments
    assert ("m", "distill", "mixup") not in segments and ("m", "mixup", "distill_mixup") in segments
    fig = plots.plot_staircase(df)
    drawn = {tuple(np.round(line.get_xdata(), 6)) for line in fig.axes[0].get_lines() if len(line.get_xdata()) == 2}
    assert (2.0, 4.0) in drawn and (3.0, 4.0) not in drawn     # label_smoothing (x = 2) → mixup (x = 4)


def test_staircase_axis_does_not_zoom_onto_one_image_differences_and_the_legend_covers_nothing():
    df = _runs(DEFAULT_STEPS, DEFAULT_PARENTS, val_images=359)
    n, se = staircase.measurement_noise(df)
    p = df["top1"].mean() / 100
    assert n == 359 and se == pytest.approx(100 * math.sqrt(p * (1 - p) / 359))   # ≈ 0.6 pp
    fig = plots.plot_staircase(df)
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert high - low >= staircase.SE_PER_AXIS * se and high <= 100 + 0.2 * (high - low)   # 1.7 pp of data, ≥ 4.8 pp
    texts = [t.get_text() for t in ax.texts]
    assert texts.count("n=1") == 5 and texts.count("n=2") == 1
    assert "one image = 0.28 pp" in ax.get_title()
    fig.draw_without_rendering()
    assert not ax.legend_ and len(fig.legends) == 1
    assert not fig.legends[0].get_window_extent().overlaps(ax.get_window_extent())


def test_the_noise_floor_needs_the_students_recorded_validation_images():
    assert staircase.measurement_noise(_runs(DEFAULT_STEPS, DEFAULT_PARENTS, val_images=10_000))[0] == 10_000
    assert staircase.measurement_noise(_runs(DEFAULT_STEPS, DEFAULT_PARENTS)) == (None, None)   # not recorded
    mixed = _runs(DEFAULT_STEPS, DEFAULT_PARENTS, val_images=359)
    mixed.loc[0, "val_images"] = 300
    assert staircase.measurement_noise(mixed) == (None, None)   # evaluated on different sets


def _curves(finals: dict[str, float], epochs: int = 5) -> tuple[pd.DataFrame, pd.DataFrame]:
    runs = _runs({step: {0: v} for step, v in finals.items()})
    curves = pd.concat([pd.DataFrame({"path": path, "epoch": range(epochs),
                                      "val_top1": np.linspace(20.0, v, epochs)})
                        for path, v in zip(runs["path"], runs["top1"])], ignore_index=True)
    return runs, curves


def test_curves_that_end_on_top_of_each_other_are_drawn_as_small_multiples():
    runs, curves = _curves({"a": 98.6, "b": 97.8, "c": 98.9, "d": 99.4})
    fig = plots.plot_curves(runs, curves)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["a (n=1)", "b (n=1)", "c (n=1)", "d (n=1)"]
    assert all(len(ax.get_lines()) == 4 for ax in visible)          # its own curve and the 3 others in grey
    runs, curves = _curves({"a": 60.0, "b": 75.0, "c": 90.0})
    assert len(plots.plot_curves(runs, curves).axes) == 1          # apart: one panel


def test_the_caption_names_what_the_students_were_evaluated_on():
    fm = _runs(DEFAULT_STEPS, DEFAULT_PARENTS, **{"config.data.dataset": "fashion_mnist"})
    assert tables.evaluated_on(fm) == "the test split"
    assert "Top-1/top-5 (%) on the test split, " in tables.table_markdown(stats.ablation_table(fm), split=tables.evaluated_on(fm))
    held = _runs(DEFAULT_STEPS, DEFAULT_PARENTS, **{"config.data.dataset": "cifar10", "config.data.holdout": 5000})
    assert tables.evaluated_on(held) == "5,000 held-out training images"
    held.loc[0, "config.data.holdout"] = None   # one run on the test split: not one caption
    assert tables.evaluated_on(held) == tables.evaluated_on(_runs(DEFAULT_STEPS)) == "the validation split"


# ---- compare: two folders, Welch over each one's seeds ---------------------------------------

def _folder(rng: np.random.Generator, seeds: int, delta: float, std: float, base: float = 90.0) -> pd.DataFrame:
    """Runs of steps a → b: b gains `delta` on a, with independent seed noise of `std` on each run."""
    return _synthetic({"a": list(base + rng.normal(0, std, seeds)), "b": list(base + delta + rng.normal(0, std, seeds))})


def test_welch_matches_scipy():
    from scipy import stats as scipy_stats
    a, b = np.array([1.0, 2.5, 0.7, 1.9]), np.array([2.2, 3.1, 2.9, 4.0, 2.6, 3.3])
    diff, low, high, p = contrasts.welch(a, b)
    ref = scipy_stats.ttest_ind(b, a, equal_var=False)
    assert diff == pytest.approx(b.mean() - a.mean())
    assert p == pytest.approx(ref.pvalue)
    assert (low, high) == pytest.approx(tuple(ref.confidence_interval(0.95)))
    assert math.isnan(contrasts.welch(a[:1], b)[1])            # one seed: no interval
    assert contrasts.welch(np.ones(3), np.ones(3) * 2)[1:] == (1.0, 1.0, 0.0)


def test_compare_finds_a_known_change_of_delta_and_not_a_null_one_at_the_stated_rate():
    rng = np.random.default_rng(0)
    # 20 seeds each, std 0.2: a Δ that grows by 0.3 between the folders is found
    row = compare.compare_runs(_folder(rng, 20, 0.2, 0.2), _folder(rng, 20, 0.5, 0.2)).set_index("step").loc["b"]
    assert row["delta_low"] > 0 and row["delta_p"] < 0.05 and row["delta_diff"] == pytest.approx(0.3, abs=0.15)
    # with no change, the 95 % interval excludes 0 in about 5 % of repeats; with +0.3, nearly always
    def rate(change: float, repeats: int = 400) -> float:
        hits = 0
        for _ in range(repeats):
            d_a = rng.normal(0.2, 0.2 * math.sqrt(2), 20)       # a paired Δ's noise: two runs' noise
            d_b = rng.normal(0.2 + change, 0.2 * math.sqrt(2), 20)
            _, low, high, _ = contrasts.welch(d_a, d_b)
            hits += low > 0 or high < 0
        return hits / repeats
    assert 0.02 < rate(0.0) < 0.09
    assert rate(0.3) > 0.8


def test_compare_never_pairs_seeds_across_folders():
    """Seed 0 of A and seed 0 of B share a number only: shuffling B's seed numbers changes nothing."""
    rng = np.random.default_rng(1)
    a, b = _folder(rng, 5, 0.2, 0.3), _folder(rng, 5, 0.6, 0.3)
    relabelled = b.assign(seed=b["seed"].map({0: 3, 1: 4, 2: 0, 3: 1, 4: 2}))
    pd.testing.assert_frame_equal(compare.compare_runs(a, b), compare.compare_runs(a, relabelled))


def test_compare_command_on_the_committed_budgets(capsys, tmp_path):
    from bench.cli import ROOT, main
    a, b = ROOT / "results" / "fashion_mnist_table6", ROOT / "results" / "fashion_mnist_table6_32ep"
    before = sorted(str(p) for p in b.rglob("*"))
    assert main(["compare", str(a), str(b), "--format", "csv"]) == 0
    table = pd.read_csv(__import__("io").StringIO(capsys.readouterr().out)).set_index("step")
    assert table.loc["distill_mixup", "delta_p"] == pytest.approx(0.013, abs=0.001)
    assert (table.drop(index=["efficient", "distill_mixup"])["delta_p"] > 0.05).all()
    assert sorted(str(p) for p in b.rglob("*")) == before
    assert main(["compare", str(a), str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {tmp_path / 'nope'}: no such results folder"


# ---- seeds enough to tell: power of the paired test ------------------------------------------

def test_seeds_to_detect_matches_the_published_one_sample_t_power():
    """G*Power's one-sample (paired) t-test, two-sided α = 0.05, power 0.8: d = 1 needs 10, d = 0.5 34."""
    assert power.seeds_to_detect(1.0, 1.0) == 10 and power.paired_power(1.0, 1.0, 10) == pytest.approx(0.8031, abs=1e-4)
    assert power.seeds_to_detect(0.5, 1.0) == 34 and power.seeds_to_detect(0.25, 0.5) == 34
    mde = power.detectable_delta(3, 0.22)
    assert power.paired_power(mde, 0.22, 3) == pytest.approx(0.8, abs=1e-6) and power.detectable_delta(12, 0.22) < mde


def test_the_planned_seeds_find_the_effect_at_the_stated_power_by_simulation():
    rng = np.random.default_rng(2)
    n = power.seeds_to_detect(0.3, 0.2)

    def rejects(true_delta: float) -> float:
        d = rng.normal(true_delta, 0.2, size=(4000, n))
        t = d.mean(axis=1) / (d.std(axis=1, ddof=1) / math.sqrt(n))
        from scipy import stats as scipy_stats
        return float((np.abs(t) > scipy_stats.t.ppf(0.975, n - 1)).mean())
    assert 0.78 < rejects(0.3) < 0.92            # at least the 80 % asked for, and not far above
    assert 0.035 < rejects(0.0) < 0.065          # the test's own 5 %


def test_seed_noise_pools_each_steps_paired_variance():
    df = _synthetic({"a": [50.0, 60.0, 70.0], "b": [51.0, 62.0, 70.0], "c": [53.0, 64.0, 72.5]})
    d_b, d_c = np.array([1.0, 2.0, 0.0]), np.array([2.0, 2.0, 2.5])
    sd, dof = stats.seed_noise(df)
    assert dof == 4 and sd == pytest.approx(math.sqrt((d_b.var(ddof=1) * 2 + d_c.var(ddof=1) * 2) / 4))
    assert stats.seed_noise(_synthetic({"a": [50.0], "b": [51.0]}))[1] == 0


def test_plan_says_how_many_seeds_detect_a_delta_or_why_it_cannot(capsys):
    from bench.cli import ROOT, main
    recipe, folder = ROOT / "recipes" / "fashion-mnist-table6-32ep.yaml", ROOT / "results" / "fashion_mnist_table6_32ep"
    assert main(["plan", str(recipe), "--detect", "0.3", "--noise", str(folder)]) == 0
    sd, _ = stats.seed_noise(frames.load_results(folder).runs)
    out = capsys.readouterr().out
    assert f"{power.seeds_to_detect(0.3, sd)} seeds per step; the 3 seeds planned detect {power.detectable_delta(3, sd):.2f}" in out
    assert main(["plan", str(recipe), "--detect", "0.3"]) == 2
    assert "no seed noise to go on; give --noise RESULTS_DIR" in capsys.readouterr().err
    assert main(["plan", str(recipe), "--detect", "0.3", "--noise", str(ROOT / "results" / "default")]) == 2
    assert "measures no seed noise" in capsys.readouterr().err
