"""Carry recorded results over to the current experiment schema (`bench.config.schema.SCHEMA`):
`python -m bench.runs.migrate RESULTS_DIR [RESULTS_DIR ...]`.

Schema 2 makes a run's identity the hash of its experiment keys that differ from their defaults
(execution keys left out), where schema 1 hashed the whole config, leaves the data keys that a
data set does not read out of its config.yaml, and records in final.json the number of images
evaluated (`val_images`, one per entry of val_logit_gaps.npy). Each run directory's config.yaml is written
again in that form and its hash computed from it; every record that names the old hash
(final.json, teacher.json, failed.json, launch.json, runs.csv) gets the new one, byte for byte
otherwise. `run_ablation.py report RESULTS_DIR` then writes runs.csv's config columns again.
Running it twice changes nothing. A hash it cannot map (a teacher given as weights, whose file's
digest only the plan knows) is named, and that file is left as it was.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import numpy as np

from bench.config import RunConfig
from bench.config.datasets import DATASETS
from bench.errors import BenchError
from bench.runs import files
from bench.runs.rundir import RunDir, run_paths

HASH = re.compile(r"\b[0-9a-f]{12}\b")
RECORDS = (RunDir.FINAL, RunDir.TEACHER, RunDir.FAILED)   # in each run directory
MANIFESTS = ("launch.json", "runs.csv")                  # in the results directory


def _schema2_config(rd: RunDir) -> RunConfig:
    """A run's config.yaml as schema 2 reads it: the data keys its data set never read dropped
    (schema 1 recorded them all), a one-line error for a run of a setting schema 2 does not have."""
    raw = rd.read_config() or {}
    data = raw.get("data", {})
    if data.get("decode_reduced"):
        raise BenchError(f"{rd / RunDir.CONFIG}: data.decode_reduced=true, which schema 2 does not have; "
                         "move the run away (or migrate without it) and train it again")
    spec = DATASETS.get(data.get("dataset", "digits"))
    raw = {**raw, "data": {k: v for k, v in data.items() if spec is None or spec.applies(k)}}
    try:
        return RunConfig.model_validate(raw)
    except ValueError as err:
        raise BenchError(f"{rd / RunDir.CONFIG}: not a config of this schema ({str(err).splitlines()[0]})") from None


def migrate(out: Path) -> tuple[list[Path], list[str]]:
    """Rewrite the run directories and records under `out`; (files changed, hashes not mapped)."""
    out = Path(out)
    manifest = files.read_json(out / "launch.json") or {"runs": []}
    listed = {record["path"]: record.get("config_hash") for record in manifest["runs"]}
    mapping: dict[str, str] = {}   # old config hash → new
    changed = []
    for rel in run_paths(out):
        rd = RunDir(out / rel)
        cfg = _schema2_config(rd)
        if rd.read_config() != cfg.record():
            files.write_yaml(rd / RunDir.CONFIG, cfg.record())
            changed.append(rd / RunDir.CONFIG)
        final = files.read_json(rd / RunDir.FINAL)
        if final and "val_images" not in final and (rd / RunDir.LOGIT_GAPS).is_file():   # one gap per image evaluated
            files.write_json(rd / RunDir.FINAL, {**final, "val_images": len(np.load(rd / RunDir.LOGIT_GAPS))})
            changed.append(rd / RunDir.FINAL)
        old = [(files.read_json(rd / name) or {}).get("config_hash") for name in (RunDir.FINAL, RunDir.FAILED)]
        for value in [*old, listed.get(str(rel))]:
            if value and mapping.setdefault(value, cfg.config_hash()) != cfg.config_hash():
                raise BenchError(f"{rd}: config hash {value} stands for two experiments ({mapping[value]}, {cfg.config_hash()})")
    unmapped = []
    for path in [out / name for name in MANIFESTS] + [out / rel / name for rel in run_paths(out) for name in RECORDS]:
        text = files.read_text(path)
        if text is None:
            continue
        if path.name in RECORDS:
            teacher = (files.read_json(path) or {}).get("teacher_hash")
            if teacher and teacher not in mapping and teacher not in mapping.values():
                unmapped.append(f"{path}: teacher_hash {teacher}")
        new = HASH.sub(lambda m: mapping.get(m.group(), m.group()), text)
        if new != text:
            files.write_text(path, new)
            changed.append(path)
    return changed, unmapped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.runs.migrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="+", type=Path, help="results directories (each holds run directories)")
    args = parser.parse_args(argv)
    for out in args.results:
        try:
            changed, unmapped = migrate(out)
        except BenchError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
        print(f"{out}: {len(changed)} files rewritten")
        for line in unmapped:
            print(f"  not mapped (a teacher given as weights: plan the recipe to see its new hash): {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
