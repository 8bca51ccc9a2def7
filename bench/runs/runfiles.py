"""The files a run writes while it trains, kept whole: its config record, metrics log,
checkpoint and outputs; what cannot be resumed from is moved aside, never deleted."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional

from bench.config import RunConfig
from bench.errors import BenchError
from bench.runs import files


class RunFiles:
    """Every file name a run writes (the layout in bench/runs/rundir.py), and the writes that
    keep them whole."""

    CONFIG = "config.yaml"
    ENV = "env.json"
    METRICS = "metrics.jsonl"
    CHECKPOINT = "last.pt"
    WEIGHTS = "model.pt"
    LOGIT_GAPS = "val_logit_gaps.npy"   # per validation image: max logit − mean of the others
    CORRECT = "val_correct.npy"         # per validation image, in the data set's order: top-1 right (bool)
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

    def write_config(self, cfg: RunConfig, teacher_hash: Optional[str] = None) -> None:
        """config.yaml, and teacher.json for a run that distils (its teacher's identity)."""
        files.write_yaml(self / self.CONFIG, cfg.record())
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

    def still_here(self) -> None:
        """Refuse to write into a run directory removed while the run trained: writing would make
        it again, holding only what comes after (a checkpoint without its config, a log from the
        middle)."""
        if not self.path.is_dir():
            raise BenchError(f"{self.path}: the run directory was removed while the run trained; nothing more is "
                             "written to it, and the same command trains the run again")

    def append_metrics(self, row: dict) -> None:
        self.still_here()
        path = self / self.METRICS
        size = path.stat().st_size if path.exists() else 0
        try:
            with open(path, "a") as f:
                f.write(json.dumps(row, sort_keys=True) + "\n")
                f.flush()
                os.fsync(f.fileno())
        except OSError as err:   # disk full: no half row is left
            self.still_here()
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
        self.still_here()
        files.save_torch(self / self.CHECKPOINT, state)

    def load_checkpoint(self) -> Optional[dict[str, Any]]:
        path = self / self.CHECKPOINT
        return files.load_torch(path) if path.is_file() else None

    def save_outputs(self, weights: dict, logit_gaps: Any, correct: Any) -> None:
        """The final weights and, per validation image, its logit gap and whether top-1 got it right, before final.json."""
        self.still_here()
        files.save_torch(self / self.WEIGHTS, weights)
        files.write_npy(self / self.LOGIT_GAPS, logit_gaps)
        files.write_npy(self / self.CORRECT, correct)

    def remove_started(self, out: Path) -> None:
        """Delete what starting this run wrote (and nothing else), then its empty folders up to `out`."""
        for name in self.STARTED:
            (self / name).unlink(missing_ok=True)
        files.remove_stale_temporaries(self.path)
        for folder in [self.path, *self.path.parents]:
            if folder == Path(out) or not folder.is_dir() or any(folder.iterdir()):
                break
            folder.rmdir()


def _checkpoint_epoch(path: Path) -> tuple[int, str]:
    """(the last epoch a checkpoint has trained, −1 for none; why it cannot be resumed from, or "")."""
    try:
        state = files.load_torch(path)
    except BenchError as err:
        return -1, str(err).removeprefix(f"{path}: ")
    if not (isinstance(state, dict) and type(state.get("epoch")) is int and "model" in state):
        return -1, "not a checkpoint of a run"
    return state["epoch"], ""
