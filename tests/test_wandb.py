"""Weights & Biases: offline runs read back from their .wandb files, and tables rebuilt from a
stand-in of `wandb.Api()` identical to those built from the run directories."""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pandas as pd
import pytest

import bench.engine.loop as loop
from bench import report, runs
from bench.ablation import plan, run_ablation, tracking, wandb_connect
from bench.cli import main
from bench.config import WandbConfig, load_recipe, tricks_on
from bench.errors import BenchError, ConfigError
from bench.report.wandb import load_wandb_results, write_wandb_report
from bench.report.wandb_summary import delta_summary, log_report, summary_run_id
from bench.runs import RunDir
from bench.runs.rundir import flat_config

# ---- a reader of wandb's offline run files: LevelDB-log framing of protobuf Records ----------
BLOCK, HEADER = 32 * 1024, 7          # each chunk: crc32c (4), length (2, little-endian), type (1)
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: Path) -> list:
    """The `wandb_internal_pb2.Record`s of a .wandb file. The file opens with its own 7-byte
    header (":W&B", a 2-byte magic, a version byte); blocks are counted from the file's start."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", data[:7]
    pos, parts, payloads = HEADER, [], []
    while pos + HEADER <= len(data):
        left = BLOCK - pos % BLOCK
        if left < HEADER:                 # the block's tail is too short for a header: padding
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + HEADER])
        if kind == 0 and length == 0:
            pos += left
            continue
        chunk = data[pos + HEADER:pos + HEADER + length]
        pos += HEADER + length
        if kind == FULL:
            payloads.append(chunk)
        elif kind == FIRST:
            parts = [chunk]
        elif kind == MIDDLE:
            parts.append(chunk)
        elif kind == LAST:
            payloads.append(b"".join(parts + [chunk]))
        else:
            raise AssertionError(f"{path}: chunk type {kind} at byte {pos}")
    records = []
    for payload in payloads:
        record = pb.Record()
        record.ParseFromString(payload)
        records.append(record)
    return records


def read_offline_run(run_dir: Path) -> dict:
    """An offline run folder as run attributes, config, summary, history rows, files and the
    artifacts it logged or used (`used`: logged to be used once committed, as use_artifact does)."""
    (file,) = Path(run_dir).glob("run-*.wandb")
    run, config, summary, history, artifacts = None, {}, {}, [], []
    for record in read_records(file):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
            config.update({item.key: json.loads(item.value_json) for item in record.run.config.update})
        elif kind == "config":
            config.update({item.key: json.loads(item.value_json) for item in record.config.update})
        elif kind == "summary":
            for item in record.summary.update:
                summary["/".join(item.nested_key) if item.nested_key else item.key] = json.loads(item.value_json)
        elif kind == "history":
            history.append({"/".join(i.nested_key) if i.nested_key else i.key: json.loads(i.value_json)
                            for i in record.history.item})
        elif kind == "artifact":
            a = record.artifact
            artifacts.append({"name": a.name, "type": a.type, "digest": a.digest, "used": a.use_after_commit,
                              "files": [entry.path for entry in a.manifest.contents], "metadata": json.loads(a.metadata) if a.metadata else {}})
    assert run is not None, f"{file}: no run record"
    return {"id": run.run_id, "group": run.run_group, "job_type": run.job_type, "name": run.display_name,
            "tags": list(run.tags), "project": run.project, "sweep_id": run.sweep_id, "config": config,
            "summary": summary, "history": history, "artifacts": artifacts, "files": Path(run_dir) / "files"}


def offline_runs(wandb_root: Path) -> list[dict]:
    """The offline runs under `wandb_root`/wandb, oldest first, once wandb has written them out."""
    import wandb

    wandb.teardown()   # run.finish() returns before wandb's service has flushed the files
    return [read_offline_run(d) for d in sorted(Path(wandb_root).glob("wandb/offline-run-*"))]


# ---- a stand-in for wandb.Api(), shaped like its runs: config, summary, history, files ------
class StandInFile:
    def __init__(self, path: Path):
        self.path = path

    def download(self, root: str, replace: bool = False):
        if not self.path.is_file():
            raise ValueError(f"{self.path.name}: no such file")
        shutil.copyfile(self.path, Path(root) / self.path.name)


class StandInRun:
    def __init__(self, offline: dict):
        self.id, self.group, self.job_type = offline["id"], offline["group"], offline["job_type"]
        self.name, self.tags = offline["name"], offline["tags"]
        self.config = {k: v for k, v in offline["config"].items() if not k.startswith("_")}
        self.summary = offline["summary"]
        self._history, self._files = offline["history"], offline["files"]

    def scan_history(self, keys=None, page_size=1000):
        return iter([dict(row) for row in self._history])

    def file(self, name: str) -> StandInFile:
        return StandInFile(self._files / name)


class StandInApi:
    def __init__(self, offline: list[dict]):
        self.offline, self.queries = offline, []

    def runs(self, path: str, filters=None, **kwargs):
        self.queries.append((path, filters))
        return [StandInRun(o) for o in self.offline if o["group"] == (filters or {}).get("group")]


# ---- tests --------------------------------------------------------------------------------
FAST = (("efficient.precision", "fp32"), ("data.max_train_batches", 2))   # bf16 is slow on CPUs
@pytest.fixture(scope="module")
def logged(tmp_path_factory):
    """A tiny ablation (a teacher, efficient, distill) trained with W&B offline, and its report
    logged twice (the report run again)."""
    tmp = tmp_path_factory.mktemp("wandb")
    recipe = tmp / "recipe.yaml"
    from conftest import TINY_RECIPE
    recipe.write_text(TINY_RECIPE + "wandb: {project: bench-test, log_every_steps: 1}\n")
    out = tmp / "out"
    mp = pytest.MonkeyPatch()
    for var in ("WANDB_DIR", "WANDB_PROJECT", "WANDB_ENTITY", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_SWEEP_ID",
                "WANDB_RUN_ID"):
        mp.delenv(var, raising=False)
    mp.setenv("WANDB_MODE", "offline")
    loaded = load_recipe(recipe)
    specs = plan(loaded, only=["efficient", "distill"], overrides=FAST)
    run_ablation(specs, out, progress=False, wandb=loaded.wandb)
    report.write_report(out, figures=False)
    import matplotlib.pyplot as plt
    fig = plt.figure(figsize=(1, 1))
    (out / "figures").mkdir()
    fig.savefig(out / "figures" / "curves.png")
    plt.close(fig)
    log_report(loaded.wandb, out)
    log_report(loaded.wandb, out)
    mp.undo()
    return out, specs, offline_runs(out)


def trained_runs(offline: list[dict]) -> dict[str, dict]:
    """The offline training runs by their run directory's path."""
    return {o["config"]["run"]["path"]: o for o in offline if o["job_type"] != "summary"}


def test_one_offline_run_per_training_run_with_group_tags_config_and_metrics(logged):
    out, specs, offline = logged
    by_path = trained_runs(offline)
    assert len(by_path) == len(specs) == 3 and set(by_path) == {str(s.path) for s in specs}
    for spec in specs:
        o = by_path[str(spec.path)]
        final = runs.read_json(out / spec.path / RunDir.FINAL)
        assert o["group"] == "out" and o["project"] == "bench-test"
        assert o["job_type"] == spec.role and o["name"] == f"{spec.model}/{spec.step}/seed{spec.seed}"
        assert o["id"] == (out / spec.path / RunDir.WANDB_ID).read_text().strip()
        assert o["config"]["run"]["step"] == spec.step and o["config"]["run"]["role"] == spec.role
        # nested sections, as config.yaml: W&B's filter config.schedule.kind is runs.csv's column
        assert o["config"]["schedule"]["kind"] == spec.config.schedule.kind
        assert o["config"]["optim"]["lr_per_256"] == spec.config.optim.lr_per_256
        assert {k: o["config"][k] for k in type(spec.config).model_fields} == spec.config.model_dump(mode="json")
        assert not [k for k in o["config"] if "." in k]
        assert o["summary"]["final"] == final and o["summary"]["top1"] == final["top1"]
        steps = spec.config.schedule.epochs * 2   # max_train_batches: 2
        batches = [h for h in o["history"] if "batch/train_loss" in h]
        assert [h["global_step"] for h in batches] == list(range(steps))
        assert all(h["batch/train_loss"] > 0 for h in batches)
        epochs = [h for h in o["history"] if "val_top1" in h]
        local = RunDir(out / spec.path).read_metrics()
        assert [h["val_top1"] for h in epochs] == [r["val_top1"] for r in local]
        assert [h["epoch"] for h in epochs] == [r["epoch"] for r in local]
    tags = {o["config"]["run"]["step"]: set(o["tags"]) for o in by_path.values()}
    assert tags["efficient"] == {"warmup", "zero_gamma", "no_bias_decay"}
    assert tags["distill"] == {"warmup", "zero_gamma", "no_bias_decay", "cosine", "label_smoothing", "distill"}
    assert tags["teacher"] == {"warmup", "zero_gamma", "no_bias_decay", "cosine"}
    cfg = specs[0].config
    bf16 = cfg.model_copy(update={"efficient": cfg.efficient.model_copy(update={"precision": "bf16"})})
    assert "bf16" in tricks_on(bf16)


def test_each_run_logs_its_weights_and_a_student_uses_its_teachers(logged):
    out, specs, offline = logged
    by_path = trained_runs(offline)
    teacher, efficient, distill = (next(s for s in specs if s.step == step) for step in ("teacher", "efficient", "distill"))
    logged_by = {}
    for spec in specs:
        (own,) = [a for a in by_path[str(spec.path)]["artifacts"] if not a["used"]]
        assert own["name"] == tracking.artifact_name("out", spec.path) and own["type"] == "model"
        assert own["files"] == [RunDir.WEIGHTS] and own["metadata"] == runs.read_json(out / spec.path / RunDir.FINAL)
        logged_by[spec.step] = own
    assert logged_by["teacher"]["name"] == "out-teachers-teacher-seed0"
    # the student's input is the teacher's artifact: the same name and digest, so the same version
    (used,) = [a for a in by_path[str(distill.path)]["artifacts"] if a["used"]]
    assert {k: used[k] for k in ("name", "digest", "metadata")} == {k: logged_by["teacher"][k] for k in ("name", "digest", "metadata")}
    assert distill.teacher_path == teacher.path
    assert not [a for a in by_path[str(efficient.path)]["artifacts"] if a["used"]]
    assert len({a["digest"] for a in logged_by.values()}) == 3


def test_the_summary_run_holds_the_tables_and_is_the_same_run_when_reported_again(logged):
    out, _, offline = logged
    first, second = [o for o in offline if o["job_type"] == "summary"]
    assert first["id"] == second["id"] == summary_run_id("out") and first["id"] != summary_run_id("other")
    assert second["group"] == "out" and second["name"] == "summary"
    logged_ = second["summary"]
    assert logged_["runs/_type"] == logged_["table/_type"] == logged_["deltas/_type"] == "table-file"
    assert logged_["runs/nrows"] == 3 and logged_["table/nrows"] == 2 and logged_["deltas/nrows"] == 2
    assert logged_["figures/curves/_type"] == "image-file"
    # distill builds on label_smoothing, which did not run: no pair, so no Δ (None is left out)
    assert logged_["delta/resnet18d/distill/parent_step"] == "label_smoothing"
    assert logged_["delta/resnet18d/distill/n_pairs"] == 0 and "delta/resnet18d/distill/delta_top1" not in logged_


def test_the_summary_holds_each_delta_with_its_interval():
    rows = [{"model": "m", "role": "student", "step": step, "parent_step": parent, "seed": seed, "top1": top1}
            for step, parent, tops in (("a", None, (70.0, 71.0, 72.0)), ("b", "a", (71.0, 71.5, 73.5)))
            for seed, top1 in enumerate(tops)]
    deltas = report.stats.paired_deltas(pd.DataFrame(rows))
    summary = delta_summary(deltas)
    b = deltas.set_index("step").loc["b"]
    assert summary["m"]["b"] == {"parent_step": "a", "delta_top1": pytest.approx(1.0), "ci_low": pytest.approx(b["ci_low"]),
                                 "ci_high": pytest.approx(b["ci_high"]), "n_pairs": 3, "excludes_zero": False}
    assert summary["m"]["a"]["delta_top1"] is None and summary["m"]["a"]["parent_step"] is None


def test_tables_rebuilt_from_the_api_are_identical_to_the_local_ones(logged, tmp_path):
    out, _, offline = logged
    api = StandInApi(offline)
    remote = load_wandb_results("me/bench-test", "out", api=api)
    local = report.frames.load_results(out)
    assert api.queries == [("me/bench-test", {"group": "out"})]
    pd.testing.assert_frame_equal(remote.runs, local.runs)
    pd.testing.assert_frame_equal(remote.curves, local.curves)
    pd.testing.assert_frame_equal(remote.gaps, local.gaps)
    markdown = write_wandb_report("me/bench-test", "out", tmp_path / "from-wandb", api=api, figures=False)
    assert markdown == (out / "table.md").read_text()
    for name in ("runs.csv", "table.csv", "deltas.csv"):
        assert (tmp_path / "from-wandb" / name).read_text() == (out / name).read_text(), name


def test_runs_logged_with_flat_configs_give_the_same_tables(logged):
    """Runs logged before the configs were nested (flat `config.*` keys, the identifying columns
    at the top) read back the same; a sweep's own flat parameter is not a column."""
    out, _, offline = logged
    older = []
    for o in offline:
        nested = dict(o["config"])
        ids = nested.pop("run", None)
        flat = {} if ids is None else {**ids, **flat_config({k: v for k, v in nested.items() if not k.startswith("_")})}
        older.append({**o, "config": {**flat, "distill.temperature": 4} if flat else nested})
    assert "config.schedule.kind" in older[0]["config"] and "schedule" not in older[0]["config"]
    pd.testing.assert_frame_equal(load_wandb_results("me/bench-test", "out", api=StandInApi(older)).runs,
                                  report.frames.load_results(out).runs)


def test_report_with_wandb_logs_the_summary_of_a_results_directory(logged, tmp_path, monkeypatch):
    out = logged[0]
    copy = tmp_path / "ablation"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("wandb"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var in ("WANDB_DIR", "WANDB_SWEEP_ID", "WANDB_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    assert main(["report", str(copy), "--no-figures", "--wandb"]) == 0
    (summary,) = offline_runs(copy)
    assert summary["id"] == summary_run_id("ablation") and summary["summary"]["table/nrows"] == 2


def test_from_wandb_errors_are_one_line(logged, tmp_path, capsys):
    with pytest.raises(ConfigError, match="expected ENTITY/PROJECT"):
        load_wandb_results("bench-test", "out", api=StandInApi([]))
    with pytest.raises(BenchError, match="no finished runs in this group"):
        load_wandb_results("me/bench-test", "other", api=StandInApi(logged[2]))
    assert main(["report", "--group", "out"]) == 2
    assert "go together" in capsys.readouterr().err


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
    import time

    for var in ("WANDB_MODE", "WANDB_BASE_URL", "WANDB_DIR", "WANDB_SWEEP_ID", "WANDB_RUN_ID"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "0" * 40)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: time.sleep(120))
    t0 = time.perf_counter()
    assert wandb_connect.resolve_mode(WandbConfig()) == "offline"
    assert time.perf_counter() - t0 < wandb_connect.REACHABLE_TIMEOUT_S + 1
    specs = plan(load_recipe(write_recipe()), only=["efficient"], overrides=FAST)
    t0 = time.perf_counter()
    run_ablation(specs, tmp_path / "out", progress=False, wandb=WandbConfig())
    assert time.perf_counter() - t0 < 60
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
