"""The throughput benchmark: it runs the harness's own step, reports every variant, refuses bad input."""
from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

import bench.perf.commands as bench_commands
import bench.perf.throughput as bm
from bench.cli import main
from bench.engine.step import Step
from bench.errors import ConfigError

TINY = dict(model="resnet18d", teacher="resnet18d", image_size=16, batch_size=4, num_classes=5,
            warmup_steps=0, steps=1, rounds=2, precision="fp32", device="cpu", probe_s=0.05,
            model_kwargs={"channels": [4, 8, 16, 32], "stem_width": 4},
            teacher_kwargs={"channels": [4, 8, 16, 32], "stem_width": 4})


def test_harness_variants_run_the_loops_own_step_with_their_tricks(monkeypatch):
    seen = []
    real = Step.__call__

    def spy(self, images, labels, lr, mixing=None, terms=None):
        seen.append((self.cfg.label_smoothing is not None, mixing is not None, self.cfg.distill is not None, self.teacher is not None))
        return real(self, images, labels, lr, mixing, terms)

    monkeypatch.setattr(Step, "__call__", spy)
    result = bm.run_benchmark(bm.BenchSettings(**TINY))
    assert set(seen) == {(False, False, False, True), (True, False, False, True), (False, True, False, True),
                         (False, False, True, True), (True, True, True, True)}
    variants = result["variants"]
    assert list(variants) == ["pytorch", "plain", "label_smoothing", "mixup", "distill", "all", "nan_check_every_step",
                              "teacher_forward", "eval"]
    assert variants["plain"]["ratio_to_plain"] == 1.0 and variants["pytorch"]["ratio_to_pytorch"] == 1.0
    assert all(v["images_per_s_min"] <= v["images_per_s"] <= v["images_per_s_max"] for v in variants.values())
    assert result["train_flop_per_step"] > 0 and 0 < result["flop_utilization"]
    assert result["loader_images_per_s"] > 0 and set(result["targets_met"]) >= {"harness_within_3pct_of_pytorch"}


def test_train_flops_are_three_forward_passes_of_the_convolutions_and_linear():
    s = bm.BenchSettings(**{**TINY, "model": "resnet18d"})
    cfg = s.run_config({})
    training, _ = bm.build_training(s, cfg, torch.device("cpu"))
    with torch.utils.flop_counter.FlopCounterMode(display=False) as fwd:
        training.model(torch.randn(s.batch_size, 3, s.image_size, s.image_size))
    runner = bm.harness_runner(training, cfg)
    # backward costs two forward passes, less the input gradient of the first convolution
    assert 2.5 * fwd.get_total_flops() < bm.count_train_flops(runner) <= 3 * fwd.get_total_flops()


def test_summary_ratios_are_paired_per_round():
    s = bm.BenchSettings(**{**TINY, "steps": 1, "batch_size": 10, "rounds": 3})
    t = lambda *x: {"times_s": list(x), "peak_mem_mib": None}
    timed = {"pytorch": t(1.0, 2.0, 1.0), "plain": t(1.0, 2.0, 1.0), "label_smoothing": t(1.1, 2.2, 1.1),
             "mixup": t(1.0, 2.0, 1.0), "distill": t(2.0, 3.0, 2.0), "all": t(2.0, 3.0, 2.0),
             "nan_check_every_step": t(1.0, 2.0, 1.0), "teacher_forward": t(0.5, 0.5, 0.5), "eval": t(0.1, 0.1, 0.1)}
    r = bm.summarize(s, torch.device("cpu"), timed, flops=10**9, peak=10**10, loader_ips=100.0)
    assert r["variants"]["label_smoothing"]["ratio_to_plain"] == pytest.approx(1 / 1.1)
    assert r["variants"]["plain"]["images_per_s"] == pytest.approx(10.0)
    assert r["distill_extra_s_per_step"] == pytest.approx(1.0)
    assert r["targets_met"] == {"harness_within_3pct_of_pytorch": True, "label_smoothing_under_2pct": False,
                                "mixup_under_2pct": True, "distill_at_most_teacher_forward": False,
                                "loader_at_least_1_5x_step": True, "nan_check_under_1pct_at_default": True}
    assert r["nan_check_s_per_check"] is None   # one step a round: no check beyond the epoch's end
    steps4 = bm.BenchSettings(**{**TINY, "steps": 4, "batch_size": 10, "rounds": 3})
    timed4 = {**timed, "nan_check_every_step": t(2.5, 3.5, 2.5)}   # 0.5 s for each of 3 checks
    r4 = bm.summarize(steps4, torch.device("cpu"), timed4, flops=10**9, peak=10**10, loader_ips=100.0)
    assert r4["nan_check_s_per_check"] == pytest.approx(0.5)
    assert r4["nan_check_cost_at_default"] == pytest.approx(0.5 / 50 / 0.25)
    assert not r4["targets_met"]["nan_check_under_1pct_at_default"]
    assert "NaN check: 500000 us per check" in bench_commands.format_table(r4)
    assert "label_smoothing_under_2pct NO" in bench_commands.format_table(r)


def test_bench_command_writes_json_and_never_overwrites(tmp_path, capsys, monkeypatch):
    measured = []
    real = bm.run_benchmark
    monkeypatch.setattr(bench_commands, "run_benchmark", lambda s, progress: measured.append(s) or real(
        bm.BenchSettings(**{**TINY, "precision": s.precision, "rounds": 1}), progress))
    out = tmp_path / "b.json"
    args = ["bench", "--model", "resnet18d", "--teacher", "resnet18d", "--width", "4", "--image-size", "16",
            "--batch-size", "4", "--num-classes", "5", "--precision", "bf16", "--device", "cpu",
            "--warmup-steps", "0", "--steps", "1", "--rounds", "1", "--out", str(out)]
    assert main(args) == 0
    assert measured[0].model_kwargs == {"channels": [4, 8, 16, 32], "stem_width": 4} and measured[0].num_classes == 5
    result = json.loads(out.read_text())
    assert result["settings"]["precision"] == "bf16" and result["settings"]["channels_last"] is True
    assert all("ratio_to_plain" in v and v["images_per_s"] > 0 for v in result["variants"].values())
    assert "| mixup |" in capsys.readouterr().out
    figure = Image.open(out.with_suffix(".png"))   # the figure beside the JSON
    assert figure.format == "PNG" and figure.size[0] > 500
    before = out.read_text()
    assert main(args) == 2
    assert "never overwritten" in capsys.readouterr().err and out.read_text() == before


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "bench --batch-size = 0: must be at least 1"),
    (["--width", "0"], "bench --width = 0: must be at least 1"),
    (["--model", "resnet5o"], "unknown timm model"),
])
def test_bad_bench_input_is_one_line(args, message, capsys):
    assert main(["bench", "--steps", "1", "--rounds", "1", "--image-size", "16", "--batch-size", "2",
                 "--device", "cpu", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_settings_reach_the_harness_config():
    cfg = bm.BenchSettings(**{**TINY, "precision": "bf16", "compile": True, "channels_last": False}).run_config(
        bm.TRICKS["all"])
    assert cfg.efficient.precision == "bf16" and cfg.runtime.compile and not cfg.runtime.channels_last
    assert cfg.label_smoothing.eps == 0.1 and cfg.mixup.alpha == 0.2 and cfg.distill.temperature == 20.0
    with pytest.raises(ConfigError, match="--steps"):
        bm.BenchSettings(steps=0)


def test_the_thread_benchmark_counts_the_steps_of_real_worker_processes():
    from bench.perf.contention import format_contention, measure
    runs = measure(processes=1, threads=1, seconds=1.0, warmup=1, lead_s=2.0)
    assert len(runs) == 1 and runs[0]["threads"] == 1 and runs[0]["steps"] >= 1
    assert runs[0]["seconds"] >= 1.0 and runs[0]["steps_per_s"] == runs[0]["steps"] / runs[0]["seconds"]
    table = format_contention({"workload": {"image_px": 8}, "cores": 2, "scenarios": {
        "alone": {"processes": 1, "threads_each": 1, "steps_per_s_each": [runs[0]["steps_per_s"]]}}})
    assert "| alone | 1 | 1 |" in table


@pytest.mark.parametrize("args", [["--cores", "0"], ["--seconds", "-1"]])
def test_thread_benchmark_bad_input_is_one_line(args, capsys):
    assert main(["bench-threads", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: bench-threads --cores") and err.count("\n") == 1


def test_recipe_benchmark_times_the_recipes_own_runs_under_each_variant(tmp_path, capsys):
    out = tmp_path / "recipe.json"
    narrow = "model.kwargs={channels: [4, 8, 16, 32], stem_width: 4}"
    assert main(["bench-recipe", "recipes/default.yaml", "--only", "distill", "--images", "128", "--rounds", "1",
                 "--set", narrow, "--set", "runtime.threads=1",
                 "--variant", "big", "data.global_batch_size=64", "--out", str(out)]) == 0
    r = json.loads(out.read_text())
    rows = r["results"]
    # the teacher the distillation run needs, and the run itself, each as the recipe has it and as the variant
    assert set(rows) == {f"{run}/{v}" for run in ("teachers/teacher", "resnet18d/04-distill") for v in ("recipe", "big")}
    base, big = rows["resnet18d/04-distill/recipe"], rows["resnet18d/04-distill/big"]
    assert (base["batch_size"], big["batch_size"]) == (128, 64)
    assert big["lr"] == pytest.approx(base["lr"] / 2)   # lr per 256 images: the linear-scaling rule
    assert base["images_per_round"] == 128 and big["images_per_round"] == 128 and base["threads"] == 1
    assert base["ratio_to_first"] == 1.0
    assert all(v["images_per_s_min"] <= v["images_per_s"] <= v["images_per_s_max"] for v in rows.values())
    printed = capsys.readouterr().out
    assert "| resnet18d/04-distill | big | data.global_batch_size=64 | 64 |" in printed
    assert out.with_suffix(".png").stat().st_size > 0 and f"wrote {out.with_suffix('.png')}" in printed   # the figure beside it
    assert main(["bench-recipe", "recipes/default.yaml", "--out", str(out)]) == 2   # finished results stay


@pytest.mark.parametrize("args, message", [
    (["--images", "0"], "bench-recipe --images 0, --rounds 3: must be at least 1"),
    (["--variant", "recipe", "data.global_batch_size=64"], "bench-recipe --variant: names repeat (recipe, recipe)"),
    (["--variant", "x", "data.global_batch_sise=64"], "global_batch_sise"),
])
def test_recipe_benchmark_bad_input_is_one_line(args, message, capsys):
    assert main(["bench-recipe", "recipes/default.yaml", "--only", "efficient", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_the_ablation_benchmark_times_a_whole_run_on_the_kernels_asked_for(write_recipe, tmp_path, capsys):
    """A fresh process runs the ablation; on a CPU with AVX-512, --cpu-kernels avx2 runs ATen's AVX2 code."""
    out = tmp_path / "wall.json"
    args = ["bench-ablation", str(write_recipe()), "--cpu-kernels", "avx2", "--smoke", "--only", "efficient", "--out", str(out)]
    assert main(args) == 0
    r = json.loads(out.read_text())
    (one,) = r["rounds"]
    assert one["wall_s"] > 0 and [x["step"] for x in one["runs"]] == ["efficient"] and 0 <= one["runs"][0]["top1"] <= 100
    assert r["cpu_kernels"] == "AVX2" and r["args"] == ["--smoke", "--only", "efficient"] and "steps:" in r["recipe_text"]
    assert "| 0 |" in capsys.readouterr().out
    assert main(args) == 2 and "never overwritten" in capsys.readouterr().err
    assert main(["bench-ablation", str(write_recipe()), "--only", "nope", "--out", str(tmp_path / "x.json")]) == 2
    err = capsys.readouterr().err
    assert "failed (exit 2)" in err and "no such step" in err and err.count("\n") == 1 and not (tmp_path / "x.json").exists()
    assert main(["bench-ablation", str(write_recipe()), "--rounds", "0"]) == 2
    assert capsys.readouterr().err == "error: bench-ablation --rounds = 0: must be at least 1\n"
    assert main(["bench-pipeline", "--grid", "--seconds", "0"]) == 2
    assert capsys.readouterr().err == "error: bench-pipeline --seconds = 0.0: must be positive\n"
