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
        """final.json, None when the run has not finished; a damaged one is a one-line error."""
        record = self._read_record(self.FINAL, "a finished run's result is never overwritten: restore the file "
                                   f"from a copy, or move {self.path} away to train the run again")
        if record is not None and "config_hash" not in record:
            raise BenchError(f"{self / self.FINAL}: unreadable (no config_hash in it); a finished run's result is never "
                             f"overwritten: restore the file from a copy, or move {self.path} away to train the run again")
        return record

    def _read_record(self, name: str, what_to_do: str) -> Optional[dict]:
        """A JSON object file of the run, None when absent; `what_to_do` ends the error about a damaged one."""
        try:
            record = files.read_json(self / name)
        except files.Unreadable as err:
            raise BenchError(f"{err}; {what_to_do}") from None
        if record is not None and not isinstance(record, dict):
            raise BenchError(f"{self / name}: unreadable (a JSON {type(record).__name__}, not an object); {what_to_do}")
        return record

    def read_config(self) -> Optional[dict]:
        """config.yaml as a mapping, None when absent; a damaged one is a one-line error."""
        what_to_do = f"it tells which config {self.CHECKPOINT} belongs to: restore it, or move {self.path} away to train the run again"
        try:
            saved = files.read_yaml(self / self.CONFIG)
        except files.Unreadable as err:
            raise BenchError(f"{err}; {what_to_do}") from None
        if saved is not None and not isinstance(saved, dict):
            raise BenchError(f"{self / self.CONFIG}: unreadable (a YAML {type(saved).__name__}, not a mapping); {what_to_do}")
        return saved

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
        saved = self.read_config()
        if saved is None or not _same_config(saved, cfg):
            cut = [key for key in cfg.model_dump() if key not in (saved or {})]
            if saved is not None and cut and cut == list(cfg.model_dump())[-len(cut):]:   # its last keys are missing
                raise BenchError(f"{self / self.CONFIG}: unreadable (it ends before '{cut[0]}': cut short); it tells which "
                                 f"config {self.CHECKPOINT} belongs to: restore it, or move {self.path} away to train the run again")
            return "conflict", ""
        teacher = self._read_record(self.TEACHER, f"it tells which teacher {self.CHECKPOINT} learnt from: restore it, "
                                    f"or move {self.path} away to train the run again")
        return teacher_state(teacher or {}, teacher_hash, "partial", self.TEACHER)

    # ---- files written while the run trains --------------------------------------------------

    def write_config(self, cfg: RunConfig, teacher_hash: Optional[str] = None) -> None:
        """config.yaml, and teacher.json for a run that distils (its teacher's identity)."""
        files.write_yaml(self / self.CONFIG, cfg.model_dump(mode="json"))
        if teacher_hash is not None:
            files.write_json(self / self.TEACHER, {"teacher_hash": teacher_hash})

    def write_env(self, env: dict) -> None:
        files.write_json(self / self.ENV, env)

    def read_metrics(self) -> list[dict]:
        """The metrics rows; a last row cut short by a killed process is not a row. Any other
        unreadable line is `files.Unreadable` (`recover` moves such a log aside)."""
        rows, bad = self._metrics_rows()
        if bad:
            raise files.Unreadable(self / self.METRICS, bad)
        return rows

    def _metrics_rows(self) -> tuple[list[dict], str]:
        """(the rows before the first unreadable line, why that line is unreadable or "")."""
        path = self / self.METRICS
        try:
            text = path.read_bytes().decode() if path.is_file() else ""
        except UnicodeDecodeError as err:
            text = err.object[:err.start].decode()   # the rows before the damage
            text, bad = text[:text.rfind("\n") + 1], f"not UTF-8 text: byte {err.start}"
        else:
            bad = ""
        lines = [line for line in text.splitlines() if line.strip()]
        rows = []
        for n, line in enumerate(lines, start=1):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                row = None
            if not (isinstance(row, dict) and type(row.get("epoch")) is int):
                last = n == len(lines) and not text.endswith("\n") and not bad
                return rows, "" if last else f"line {n} is not a metrics row"
            rows.append(row)
        return rows, bad

    def append_metrics(self, row: dict) -> None:
        path = self / self.METRICS
        size = path.stat().st_size if path.exists() else 0
        try:
            with open(path, "a") as f:
                f.write(json.dumps(row, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:   # disk full: no half row is left
            os.truncate(path, size)
            raise BenchError(f"{path}: write failed ({err.strerror or err}); the rows before are kept") from None

    def truncate_metrics(self, before_epoch: int) -> None:
        """Keep the rows of epochs before `before_epoch` (those a resumed run will not repeat)."""
        rows = [r for r in self.read_metrics() if r["epoch"] < before_epoch]
        files.write_text(self / self.METRICS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))

    def recover(self) -> list[str]:
        """Before an unfinished run starts: move aside what it cannot go on from, and say so.

        A checkpoint that does not load moves to last.pt.corrupt-<n> (the run trains from
        scratch); a metrics log with an unreadable line moves to metrics.jsonl.corrupt-<n>, its
        rows before that line kept. When the rows kept miss an epoch the checkpoint has trained,
        the checkpoint moves to last.pt.corrupt-<n> too: a resumed run would lack that row.
        """
        notes, epoch = [], -1
        ckpt = self / self.CHECKPOINT
        if ckpt.exists():
            epoch, why = _checkpoint_epoch(ckpt)
            if why:
                notes.append(f"{ckpt}: {why}; moved to {self._move_aside(self.CHECKPOINT).name}, "
                             "training from scratch")
        rows, bad = self._metrics_rows()
        if bad:
            moved = self._move_aside(self.METRICS)
            files.write_text(self / self.METRICS, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows))
            notes.append(f"{self / self.METRICS}: unreadable ({bad}); moved to {moved.name}, the {len(rows)} rows "
                         "before it kept")
        missing = sorted(set(range(epoch + 1)) - {r["epoch"] for r in rows})
        if missing:
            notes.append(f"{self / self.METRICS}: no row of epoch {missing[0]}, which {self.CHECKPOINT} has trained; "
                         f"{self.CHECKPOINT} moved to {self._move_aside(self.CHECKPOINT).name}, training from scratch")
        return notes

    def _move_aside(self, name: str) -> Path:
        """Rename a file of the run to `<name>.corrupt-<n>` (the first n free); never deletes."""
        n = 1
        while (self / f"{name}.corrupt-{n}").exists():
            n += 1
        target = self / f"{name}.corrupt-{n}"
        os.rename(self / name, target)
        return target

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


def _same_config(saved: dict, cfg: RunConfig) -> bool:
    """Whether a run's config.yaml holds `cfg` (one that no longer validates does not): the same
    config hash, as for a finished run."""
    try:
        return RunConfig.model_validate(saved).config_hash() == cfg.config_hash()
    except ValueError:   # pydantic's ValidationError: a config of another schema, or a damaged one
        return False


def _checkpoint_epoch(path: Path) -> tuple[int, str]:
    """(the last epoch a checkpoint has trained, −1 for none; why it cannot be resumed from, or "")."""
    try:
        state = files.load_torch(path)
    except BenchError as err:
        return -1, str(err).removeprefix(f"{path}: ")
    if not (isinstance(state, dict) and type(state.get("epoch")) is int and "model" in state):
        return -1, "not a checkpoint of a run"
    return state["epoch"], ""
