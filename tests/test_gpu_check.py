"""gpu-check: the parts it runs, where each writes, and that nothing recorded is overwritten.
(.ci/run runs it whole with --tiny on the CPU.)"""
from __future__ import annotations

import json

import bench.perf.gpu_check as gc
from bench.cli import main


def test_dry_run_lists_every_part_and_its_file(tmp_path, capsys):
    assert main(["gpu-check", "--dry-run", "--device", "cpu", "--out-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    for part in ("fp16", "bf16", "fp16-contiguous", "loader", "smoke"):
        assert f"{part}: run_ablation.py" in out and str(tmp_path / f"gpu-cpu-{part}.json") in out
    assert "fp16-compiled" not in out   # compiling is measured on a GPU only
    assert "--image-size 224 --batch-size 128" in out and list(tmp_path.iterdir()) == []


def test_a_gpu_gets_every_part_and_the_full_sizes():
    names = [p.name for p in gc.parts(tiny=False, cores=16)]
    assert names == ["fp16", "bf16", "fp16-contiguous", "fp16-compiled", "loader", "smoke"]
    loader = next(p for p in gc.parts(tiny=False, cores=16) if p.name == "loader")
    assert loader.args[loader.args.index("--workers") + 1:] == ("8", "16")


def test_parts_run_in_order_and_the_summary_reads_them(tmp_path, monkeypatch):
    calls = []

    def fake_bench(args):
        calls.append(("bench", args))
        out = args[args.index("--out") + 1]
        variants = {k: {"images_per_s": 10.0, "ratio_to_pytorch": 1.0, "peak_mem_mib": 5.0} for k in ("plain", "pytorch")}
        (tmp_path / out).write_text(json.dumps({"variants": variants, "distill_extra_s_per_step": 0.01,
                                                "teacher_forward_s_per_step": 0.02, "flop_utilization": 0.4,
                                                "nan_check_cost_at_default": 0.001}))

    def fake_loader(args):
        calls.append(("bench-loader", args))
        (tmp_path / args[args.index("--out") + 1]).write_text(json.dumps({"loader_images_per_s": {}, "cores_per_gpu": {}}))

    monkeypatch.setattr(gc, "cmd_bench", fake_bench)
    monkeypatch.setattr(gc, "cmd_bench_loader", fake_loader)
    monkeypatch.setattr(gc, "run_smoke", lambda out: (calls.append(("smoke", out)), out.write_text('{"time_s": 1, "returncode": 0}')))
    summary = gc.run_gpu_check(tmp_path, "cpu", tiny=True, dry_run=False, progress=lambda msg: None)
    assert [c[0] for c in calls] == ["bench", "bench", "bench", "bench-loader", "smoke"]
    assert all("--device" in c[1] and "cpu" in c[1] for c in calls if c[0] == "bench")
    assert summary["parts"]["fp16"]["plain_images_per_s"] == 10.0 and summary["skipped"] == ["fp16-compiled"]
    assert json.loads((tmp_path / "gpu-cpu-summary-tiny.json").read_text())["parts"]["smoke"]["returncode"] == 0


def test_recorded_results_are_never_overwritten(tmp_path, capsys):
    (tmp_path / "gpu-cpu-loader.json").write_text("{}")
    assert main(["gpu-check", "--device", "cpu", "--out-dir", str(tmp_path)]) == 2
    assert "never overwritten" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpu-cpu-loader.json"]   # nothing ran


def test_cuda_asked_for_without_one_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(gc.torch.cuda, "is_available", lambda: False)
    assert main(["gpu-check", "--device", "cuda", "--out-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no CUDA device here" in err and err.count("\n") == 1
