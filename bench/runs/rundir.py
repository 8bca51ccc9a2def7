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

A damaged file (truncated, garbage, empty) is named in a one-line error that says what to do,
or, where the run can go on without it, moved aside as `<name>.corrupt-<n>` and said so: a
finished result is never overwritten or deleted.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import pandas as pd

from bench.config import RunConfig
from bench.errors import BenchError
from bench.runs import files
from bench.runs.locks import LOCK_DIR
from bench.runs.runfiles import RunFiles

CONFIG_PREFIX = "config."   # a run's resolved config, flattened into its record: config.schedule.kind, ...


def flat_config(tree: dict) -> dict[str, Any]:
    """A nested config as dotted record keys: {"config.schedule.kind": "cosine", ...}; a section
    that is off (None) stays one key with None."""
    return pd.json_normalize(tree, sep=".").add_prefix(CONFIG_PREFIX).iloc[0].to_dict() if tree else {}


TEACHERS = "teachers"


def student_path(model: str, index: int, step: str, seed: int) -> Path:
    """Where a student run lives under the results directory: <model>/<NN-step>/seed<k>."""
    return Path(model, f"{index:02d}-{step}", f"seed{seed}")


def teacher_path(name: str, seed: int) -> Path:
    """Where a trained teacher lives under the results directory: teachers/<name>/seed<k>."""
    return Path(TEACHERS, name, f"seed{seed}")


def run_paths(out: Path) -> list[Path]:
    """Every run directory under `out` (a seed<k> folder holding a config.yaml), relative to it."""
    found = (path.parent.relative_to(out) for path in files.find(Path(out), RunDir.CONFIG))
    return sorted(rel for rel in found if rel.name.startswith("seed") and rel.parts[0] != LOCK_DIR)


@dataclass(frozen=True)
class RunState:
    """What a run directory holds for the run expected there."""

    name: str                      # "new", "partial" (a checkpoint to resume), "finished", "conflict"
    why: str = ""                  # a conflict: the experiment keys or the teacher that differ
    final: Optional[dict] = None   # a finished run's final.json


class RunDir(RunFiles):
    """A run's directory: the file names and writes of `RunFiles`, and which run it holds."""

    def read_final(self) -> Optional[dict]:
        """final.json, None when the run has not finished; a damaged one is a one-line error."""
        record = self._read_record(self.FINAL, "a finished run's result is never overwritten: restore the file "
                                   f"from a copy, or move {self.path} away to train the run again")
        if record is not None and "config_hash" not in record:
            raise BenchError(f"{self / self.FINAL}: unreadable (no config_hash in it); a finished run's result is never "
                             f"overwritten: restore the file from a copy, or move {self.path} away to train the run again")
        return record

    RECORD_KEYS = ("model", "role", "step", "step_index", "seed", "top1", "top5", "config_hash")   # the tables need these
    RECORD_TYPES = {"model": str, "role": str, "step": str, "step_index": int, "seed": int, "top1": float, "top5": float,
                    "config_hash": str}

    @classmethod
    def wrong_type(cls, final: dict) -> Optional[str]:
        """What is wrong with the types of a final.json's record keys, or None."""
        for key, kind in cls.RECORD_TYPES.items():
            value = final.get(key)
            fits = isinstance(value, str) if kind is str else \
                isinstance(value, int) and not isinstance(value, bool) if kind is int else \
                isinstance(value, (int, float)) and not isinstance(value, bool) and 0 <= value <= 100
            if not fits:
                shape = {str: "a string", int: "an integer", float: "a percentage from 0 to 100"}[kind]
                return f"{key} = {json.dumps(value)[:40]}: not {shape}"
        stack = final.get("stack")   # optional: the tricks of a run (bench.ablation.designs)
        if stack is not None and not (isinstance(stack, str) and stack):
            return f"stack = {json.dumps(stack)[:40]}: not a '+'-joined list of step names"
        return None

    def read_finished(self) -> tuple[dict, dict]:
        """(final.json, config.yaml) of a finished run, for its report row; `files.Unreadable` when
        either cannot be read, or config.yaml is not the config final.json names (a cut-short file
        often still parses). No config.yaml at all is allowed: the config columns are then empty."""
        final, config = files.read_json(self / self.FINAL), files.read_yaml(self / self.CONFIG) or {}
        if not isinstance(final, dict) or not all(key in final for key in self.RECORD_KEYS):
            raise files.Unreadable(self / self.FINAL, f"not a run's record: it needs {', '.join(self.RECORD_KEYS)}")
        wrong = self.wrong_type(final)
        if wrong:
            raise files.Unreadable(self / self.FINAL, wrong)
        if not isinstance(config, dict):
            raise files.Unreadable(self / self.CONFIG, f"a YAML {type(config).__name__}, not a mapping")
        if config and _config_hash(config) != final["config_hash"]:
            raise files.Unreadable(self / self.CONFIG, f"not the config of final.json's config_hash {final['config_hash']}: cut short or changed")
        return final, config

    def _read_record(self, name: str, what_to_do: str, read=files.read_json, kind: str = "JSON", shape: str = "an object") -> Optional[dict]:
        """A JSON object (or YAML mapping) file of the run, None when absent; `what_to_do` ends the
        error about a damaged one."""
        try:
            record = read(self / name)
        except files.Unreadable as err:
            raise BenchError(f"{err}; {what_to_do}") from None
        if record is not None and not isinstance(record, dict):
            raise BenchError(f"{self / name}: unreadable (a {kind} {type(record).__name__}, not {shape}); {what_to_do}")
        return record

    def read_config(self) -> Optional[dict]:
        """config.yaml as a mapping, None when absent; a damaged one is a one-line error."""
        return self._read_record(self.CONFIG, f"it tells which config {self.CHECKPOINT} belongs to: restore it, or move "
                                 f"{self.path} away to train the run again", files.read_yaml, "YAML", "a mapping")

    def state(self, expected: RunConfig | str, teacher_hash: Optional[str] = None) -> RunState:
        """What the directory holds for the run of `expected` (its config, or only its config
        hash) that distils from the teacher `teacher_hash` (a trained teacher's config hash, or
        a given one's with its file's sha256; None for a run that does not distil).

        A run of another experiment, or of another teacher, is a "conflict", said with what
        differs. Execution keys (threads, workers, checkpoint cadence, ...) are not compared: a
        run resumes under other ones.
        """
        want = expected if isinstance(expected, str) else expected.config_hash()
        final = self.read_final()
        if final is not None:
            if final["config_hash"] != want:
                return RunState("conflict", self._differences(expected, final["config_hash"], want))
            return self._teacher(final, teacher_hash, RunState("finished", final=final), self.FINAL)
        if not (self / self.CHECKPOINT).exists():
            return RunState("new")
        saved = self.read_config()
        cut = [key for key in RunConfig.model_fields if key not in (saved or {})]
        if saved and cut and cut == list(RunConfig.model_fields)[-len(cut):]:   # its last keys are missing
            raise BenchError(f"{self / self.CONFIG}: unreadable (it ends before '{cut[0]}': cut short); it tells which "
                             f"config {self.CHECKPOINT} belongs to: restore it, or move {self.path} away to train the run again")
        if _config_hash(saved) != want:
            return RunState("conflict", self._differences(expected, _config_hash(saved), want))
        teacher = self._read_record(self.TEACHER, f"it tells which teacher {self.CHECKPOINT} learnt from: restore it, "
                                    f"or move {self.path} away to train the run again")
        return self._teacher(teacher or {}, teacher_hash, RunState("partial"), self.TEACHER)

    def check(self, expected: RunConfig | str, teacher_hash: Optional[str] = None) -> RunState:
        """`state(...)`, or a one-line error when the directory holds another run."""
        state = self.state(expected, teacher_hash)
        if state.name == "conflict":
            raise BenchError(f"{self.path}: holds a run of another experiment ({state.why}); choose another --out or move it away")
        return state

    def _teacher(self, record: dict, teacher_hash: Optional[str], state: RunState, name: str) -> RunState:
        recorded = record.get("teacher_hash")
        if recorded == teacher_hash:
            return state
        return RunState("conflict", f"its teacher differs: its {name} names {recorded}, expected {teacher_hash}")

    def _differences(self, expected: RunConfig | str, here: Optional[str], want: str) -> str:
        """The experiment keys in which the run here differs from `expected`, where both configs
        are known; else the two config hashes, and where the settings are the same, the migration
        that carries runs recorded under an earlier schema over."""
        try:
            saved = RunConfig.model_validate(self.read_config())
        except (ValueError, BenchError):   # none, damaged, or of another schema
            saved = None
        keys = expected.differences(saved) if isinstance(expected, RunConfig) and saved is not None else []
        if keys:
            return f"here → expected: {'; '.join(keys)}"
        same = saved is not None and saved.config_hash() == want
        return f"config hash {here}, expected {want}" + (
            "; the same settings, recorded under an earlier schema: python -m bench.runs.migrate RESULTS_DIR" if same else "")


def _config_hash(saved: Optional[dict]) -> Optional[str]:
    """The config hash of a config.yaml's mapping; None for one that no longer validates."""
    try:
        return RunConfig.model_validate(saved).config_hash() if saved is not None else None
    except ValueError:   # pydantic's ValidationError: a config of another schema, or a damaged one
        return None
