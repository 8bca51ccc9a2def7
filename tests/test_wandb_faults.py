"""Weights & Biases never stops training: a resumed run continues its W&B run, a failing W&B
(start, logging, artifacts) or no network leaves the runs whole, and the settings come from the
recipe, the command line and the environment."""
from __future__ import annotations

import pytest
from wandb_files import FAST, offline_runs

import bench.engine.loop as loop
from bench.ablation import plan, run_ablation, tracking, wandb_connect
from bench.config import WandbConfig, load_recipe
from bench.errors import ConfigError
from bench.runs import RunDir


def test_a_resumed_run_continues_the_same_wandb_run(write_recipe, tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_DIR", raising=False)
    specs = plan(load_recipe(write_recipe()), only=["efficient"], overrides=FAST)
    out, calls = tmp_path / "out", []
    real_evaluate = loop.evaluate

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt   # killed during the second epoch
        return real_evaluate(*args, **kwargs)

    monkeypatch.setattr(loop, "evaluate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_ablation(specs, out, progress=False, wandb=WandbConfig())
    monkeypatch.setattr(loop, "evaluate", real_evaluate)
    run_ablation(specs, out, progress=False, wandb=WandbConfig())
    first, second = offline_runs(out)
    assert first["id"] == second["id"] == (out / specs[0].path / RunDir.WANDB_ID).read_text().strip()
    assert "final" not in first["summary"] and second["summary"]["final"]["top1"] >= 0
    assert [h["epoch"] for h in second["history"] if "val_top1" in h] == [1]   # epoch 0 came from the checkpoint


def test_a_wandb_failure_never_stops_training(write_recipe, tmp_path, monkeypatch, capsys):
    import wandb

    monkeypatch.setenv("WANDB_MODE", "offline")
    specs = plan(load_recipe(write_recipe()), only=["efficient", "cosine"], overrides=FAST)

    def broken_init(**kwargs):
        raise RuntimeError("no W&B today")

    monkeypatch.setattr(wandb, "init", broken_init)
    finals = run_ablation(specs[:1], tmp_path / "a", progress=False, wandb=WandbConfig())
    assert len(finals) == 1 and "could not start a run" in capsys.readouterr().err

    class BrokenRun:
        summary, dir = {}, str(tmp_path)

        def log(self, data):
            raise OSError("disk full")

        def finish(self, exit_code=0):
            pass

    tracker = tracking.WandbTracker(BrokenRun(), 1, tmp_path)
    monkeypatch.setattr(tracking, "start_run", lambda *a, **k: tracker)
    import bench.ablation.execute as ablation
    monkeypatch.setattr(ablation, "start_run", lambda *a, **k: tracker)
    finals = run_ablation(specs[1:], tmp_path / "b", progress=False, wandb=WandbConfig())
    err = capsys.readouterr().err
    assert len(finals) == 1 and err.count("logging stops, training goes on") == 1 and tracker.run is None


def test_a_failing_artifact_never_stops_training_nor_the_metrics(write_recipe, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_DIR", "WANDB_SWEEP_ID", "WANDB_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    specs = plan(load_recipe(write_recipe()), only=["distill"], overrides=FAST)   # the teacher, then distill

    def broken(*args, **kwargs):
        raise OSError("artifact store down")

    monkeypatch.setattr(tracking, "model_artifact", broken)
    out = tmp_path / "out"
    finals = run_ablation(specs, out, progress=False, wandb=WandbConfig())
    err = capsys.readouterr().err
    assert len(finals) == 2 and err.count("logging the model artifact failed") == 2
    assert err.count("declaring the teacher's weights as input failed (OSError: artifact store down); logging goes on") == 1
    for o in offline_runs(out):   # the runs themselves are whole: summary, history
        assert o["summary"]["final"]["top1"] >= 0 and not o["artifacts"]


def test_without_network_a_run_is_offline_within_seconds(write_recipe, tmp_path, monkeypatch):
    """An API key but a resolver that never answers (no network): the probe gives up after
    REACHABLE_TIMEOUT_S and the run is logged offline. Without a key, nothing is asked."""
    import socket
    import threading

    for var in ("WANDB_MODE", "WANDB_BASE_URL", "WANDB_DIR", "WANDB_SWEEP_ID", "WANDB_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    release, asked, answered = threading.Event(), [], []

    def stuck_resolver(*args, **kwargs):   # answers only when the test ends (or after 120 s)
        asked.append(args)
        release.wait(120)
        answered.append(args)
        raise socket.gaierror("temporary failure in name resolution")   # as a real one ends

    monkeypatch.setattr(socket, "getaddrinfo", stuck_resolver)
    try:
        assert wandb_connect.resolve_mode(WandbConfig()) == "offline"
        specs = plan(load_recipe(write_recipe()), only=["efficient"], overrides=FAST)
        run_ablation(specs, tmp_path / "out", progress=False, wandb=WandbConfig())
        assert asked and not answered   # offline, and trained, without waiting for the resolver's answer
    finally:
        release.set()
    (o,) = offline_runs(tmp_path / "out")
    assert o["summary"]["final"]["top1"] >= 0

    def no_connection(*args, **kwargs):
        raise AssertionError("a connection was tried without an API key")

    monkeypatch.delenv("WANDB_API_KEY")
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(socket, "create_connection", no_connection)
    assert wandb_connect.resolve_mode(WandbConfig()) == "offline"


def test_an_online_start_that_fails_is_retried_offline(tmp_path, monkeypatch, capsys):
    import wandb

    modes = []

    def init(mode, **kwargs):
        modes.append(mode)
        if mode == "online":
            raise TimeoutError("no answer within init_timeout")
        return "offline run"

    monkeypatch.setattr(wandb, "init", init)
    assert wandb_connect.init_run(WandbConfig(mode="online"), tmp_path, "abc", "g") == "offline run"
    assert modes == ["online", "offline"] and "logging offline instead" in capsys.readouterr().err


def test_wandb_settings_from_recipe_and_cli(write_recipe, monkeypatch):
    from conftest import TINY_RECIPE

    assert load_recipe(write_recipe()).wandb is None
    on = load_recipe(write_recipe(TINY_RECIPE + "wandb: {entity: lab}\n")).wandb
    assert on == WandbConfig(entity="lab")
    assert wandb_connect.choose_settings(None, True) == WandbConfig()
    assert wandb_connect.choose_settings(on, None) is on and wandb_connect.choose_settings(on, False) is None
    with pytest.raises(ConfigError, match="wandb: unknown key 'api_key'"):
        load_recipe(write_recipe(TINY_RECIPE + "wandb: {api_key: secret}\n"))
    monkeypatch.setenv("WANDB_MODE", "dryrun")
    assert wandb_connect.resolve_mode(WandbConfig()) == "offline"
    assert wandb_connect.resolve_mode(WandbConfig(mode="online")) == "online"
    monkeypatch.setenv("WANDB_MODE", "sometimes")
    with pytest.raises(ConfigError, match="WANDB_MODE"):
        wandb_connect.resolve_mode(WandbConfig())
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("NETRC", "/nonexistent")
    monkeypatch.setattr(wandb_connect, "_has_api_key", lambda host: False)
    assert wandb_connect.resolve_mode(WandbConfig()) == "offline"   # no key: offline, no network asked


def test_an_unwritable_wandb_dir_is_reported_with_the_folder_wandb_used(tmp_path, monkeypatch, capsys):
    import tempfile

    from bench.report.wandb_summary import log_report

    (tmp_path / "a-file").write_text("not a folder")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "a-file" / "wandb-here"))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))   # where wandb falls back to
    (tmp_path / "tmp").mkdir()
    out = tmp_path / "out"
    out.mkdir()
    log_report(WandbConfig(), out)
    lines = capsys.readouterr()
    assert "is not writable: this run's files are in " + str(tmp_path / "tmp" / "wandb") in lines.err
    assert f"wandb sync {tmp_path / 'tmp' / 'wandb'}/offline-run-*" in lines.out
    assert list((tmp_path / "tmp" / "wandb").glob("offline-run-*"))
