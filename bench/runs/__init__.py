"""Run directories and what keeps them whole: atomic files, per-run locks, the environment record."""
from bench.runs.files import (
                              atomic_write,
                              load_torch,
                              read_json,
                              read_yaml,
                              refuse_existing,
                              remove_stale_temporaries,
                              save_torch,
                              sha256_file,
                              write_json,
                              write_npy,
                              write_text,
                              write_yaml,
)
from bench.runs.locks import RunLock
from bench.runs.rundir import RunDir

__all__ = ["RunDir", "RunLock", "atomic_write", "load_torch", "read_json", "read_yaml", "refuse_existing",
           "remove_stale_temporaries", "save_torch", "sha256_file", "write_json", "write_npy", "write_text", "write_yaml"]
