"""A run directory: it owns every file name a run writes, its metrics log, and the check that
what it holds is a run of the same config.

```
<out>/<model>/<NN-step>/seed<k>/       (teachers: <out>/teachers/<name>/seed<k>/)
  config.yaml   the resolved config, written before training
  teacher.json  a distilled run's teacher identity, written with config.yaml (final.json repeats it)
  env.json      versions, git commit, device, threads, world size
  metrics.jsonl one row per epoch, append-only
  last.pt       checkpoint for resume (model, optimizer, scaler, epoch, every RNG state)
  model.pt      final weights;  val_logit_gaps.npy  per validation image (Fig. 4b)
  final.json    written last: its presence means the run finished
  failed.json   a NaN/inf stop;  job.json  the SLURM job;  wandb_id  the W&B run
```
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from bench.config import RunConfig
from bench.errors import BenchError
from bench.runs import files

CONFIG_PREFIX = "config."   # a run's resolved config, flattened into its record: config.schedule.kind, ...


def flat_config(tree: dict) -> dict[str, Any]:
    """A nested config as dotted record keys: {"config.schedule.kind": "cosine", ...}; a section
    that is off (None) stays one key with None."""
    return pd.json_normalize(tree, sep=".").add_prefix(CONFIG_PREFIX).iloc[0].to_dict() if tree else {}


def teacher_state(record: dict, teacher_hash: Optional[str], state: str, name: str) -> tuple[str, str]:
    """(`state`, "") when a run's `record` (final.json, teacher.json) names the teacher
    `teacher_hash` (or none is expected), else ("conflict", why)."""
    recorded = record.get("teacher_hash")
    if teacher_hash is None or recorded == teacher_hash:
        return state, ""
    if recorded is None:
        return "conflict", f" (its {name} names no teacher: recorded before a student's identity included its teacher's)"
    return "conflict", f" (its teacher differs: trained from teacher {recorded}, this one is {teacher_hash})"


class RunDir:
    CONFIG = "config.yaml"
    ENV = "env.json"
    METRICS = "metrics.jsonl"
    CHECKPOINT = "last.pt"
    WEIGHTS = "model.pt"
    LOGIT_GAPS = "val_logit_gaps.npy"   # per validation image: max logit − mean of the others
    FINAL = "final.json"
    FAILED = "failed.json"              # a run stopped by a NaN/inf loss; removed when it finishes
    JOB = "job.json"                    # the SLURM job that trains it, its logs
    WANDB_ID = "wandb_id"
    TEACHER = "teacher.json"            # {"teacher_hash": ...} of a run that distils
    STARTED = (CONFIG, TEACHER, ENV, METRICS, WANDB_ID)   # what starting a run writes before its first checkpoint

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    def __truediv__(self, name: str) -> Path:
        return self.path / name

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __str__(self) -> str:
        return str(self.path)

    # ---- identity: which config the files belong to ------------------------------------------

    def read_final(self) -> Optional[dict]:
        return files.read_json(self / self.FINAL)

    def state(self, cfg: RunConfig, teacher_hash: Optional[str] = None) -> str:
        """"finished", "partial" (a checkpoint to resume), "new", or "conflict" (another config).

        A distilled run's identity includes its teacher's (`teacher_hash`: the trained teacher's
        config hash, or that of a teacher given as weights with its file's sha256): a run of
        another teacher, or one recorded without its teacher's identity, is a conflict.
        """
        return self._state(cfg, teacher_hash)[0]

    def check_config(self, cfg: RunConfig, teacher_hash: Optional[str] = None) -> str:
        """`state(cfg, teacher_hash)`, or a one-line error when the directory holds a run of
        another config (or of another teacher)."""
        state, why = self._state(cfg, teacher_hash)
        if state == "conflict":
            raise BenchError(f"{self.path}: holds a run of a different config{why}; choose another --out or move it away")
        return state

    def _state(self, cfg: RunConfig, teacher_hash: Optional[str]) -> tuple[str, str]:
        """(state, why it is a conflict when it is one)."""
        assert (cfg.distill is None) == (teacher_hash is None), "a distilled run is identified with its teacher"
        final = self.read_final()
        if final is not None:
            if final.get("config_hash") != cfg.config_hash():
                return "conflict", ""
            return teacher_state(final, teacher_hash, "finished", self.FINAL)
        if not (self / self.CHECKPOINT).exists():
            return "new", ""
        saved = files.read_yaml(self / self.CONFIG)
        if saved is None or RunConfig.model_validate(saved) != cfg:
            return "conflict", ""
        return teacher_state(files.read_json(self / self.TEACHER) or {}, teacher_hash, "partial", self.TEACHER)

    # ---- files written while the run trains --------------------------------------------------

    def write_config(self, cfg: RunConfig, teacher_hash: Optional[str] = None) -> None:
        """config.yaml, and teacher.json for a run that distils (its teacher's identity)."""
        files.write_yaml(self / self.CONFIG, cfg.model_dump(mode="json"))
        if teacher_hash is not None:
            files.write_json(self / self.TEACHER, {"teacher_hash": teacher_hash})

    def write_env(self, env: dict) -> None:
        files.write_json(self / self.ENV, env)

    def read_metrics(self) -> list[dict]:
        """The metrics rows; a last row cut short by a killed process is not a row."""
        path = self / self.METRICS
        if not path.is_file():
            return []
        text = path.read_text()
        lines = [line for line in text.splitlines() if line.strip()]
        if lines and not text.endswith("\n"):
            try:
                json.loads(lines[-1])
            except json.JSONDecodeError:
                lines.pop()
        return [json.loads(line) for line in lines]

    def append_metrics(self, row: dict) -> None:
        with open(self / self.METRICS, "a") as f:
            f.write(json.dumps(row, sort_keys=True) + "\n")
            f.flush()
            os.fsync(f.fileno())

    def truncate_metrics(self, before_epoch: int) -> None:
        """Keep the rows of epochs before `before_epoch` (those a resumed run will not repeat)."""
        rows = [r for r in self.read_metrics() if r["epoch"] < before_epoch]
        files.write_text(self / self.METRICS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))

    def save_checkpoint(self, state: dict[str, Any]) -> None:
        files.save_torch(self / self.CHECKPOINT, state)

    def load_checkpoint(self) -> Optional[dict[str, Any]]:
        path = self / self.CHECKPOINT
        return files.load_torch(path) if path.is_file() else None

    def save_outputs(self, weights: dict, logit_gaps: Any) -> None:
        """The final weights and the validation logit gaps, before final.json."""
        files.save_torch(self / self.WEIGHTS, weights)
        files.write_npy(self / self.LOGIT_GAPS, logit_gaps)

    def remove_started(self, out: Path) -> None:
        """Delete what starting this run wrote (and nothing else), then its empty folders up to `out`."""
        for name in self.STARTED:
            (self / name).unlink(missing_ok=True)
        files.remove_stale_temporaries(self.path)
        for folder in [self.path, *self.path.parents]:
            if folder == Path(out) or not folder.is_dir() or any(folder.iterdir()):
                break
            folder.rmdir()
