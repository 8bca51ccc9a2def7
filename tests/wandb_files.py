"""Reading what W&B wrote: its offline run files (LevelDB-log framing of protobuf Records) as
plain dicts, and a stand-in for `wandb.Api()` serving those runs, for the W&B tests."""
from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

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


# the W&B tests' runs: fp32 (bf16 is slow on CPUs), 2 batches an epoch
FAST = (("efficient.precision", "fp32"), ("data.max_train_batches", 2))
