"""Run directories and what keeps them whole: atomic files, per-run locks, the environment record."""
from bench.runs.files import (
                              atomic_write,
                              load_torch,
                              read_json,
                              read_yaml,
                              refuse_existing,
                              remove_stale_temporaries,
                              sha256_file,
                              write_json,
                              write_text,
)
from bench.runs.locks import RunLock
from bench.runs.rundir import RunDir

__all__ = ["RunDir", "RunLock", "atomic_write", "load_torch", "read_json", "read_yaml", "refuse_existing",
           "remove_stale_temporaries", "sha256_file", "write_json", "write_text"]
