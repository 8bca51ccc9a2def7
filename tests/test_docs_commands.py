"""Every shell block of README.md and docs/*.md runs, so an example that fails breaks CI.

What runs, and how:

- A fenced block tagged ``bash``, ``sh``, ``shell`` or ``console`` is a command to run (in a
  ``console`` block only its ``$ `` lines). Untagged blocks are usage synopses, file trees and
  output, and are not run. Each block is one test, named by its file and line.
- A block runs under ``bash -euo pipefail`` in its own copy of the repository (the files git
  tracks or would track), so relative outputs such as ``runs/...`` land in the copy and the
  checkout stays clean; ``/tmp/`` in a block stands for that block's own temporary directory.
  ``python``, ``pip`` and ``jupyter`` are those of the Python running the tests. W&B is offline
  (``WANDB_MODE=offline``); the rest of the environment (``OMP_NUM_THREADS`` included) is
  inherited.
- A long command says so in the doc and uses ``--smoke`` or a tiny recipe, except where the
  doc must show the real thing.

Marks, an HTML comment on the line before the block (visible in the Markdown source):

- ``<!-- not run: REASON -->``: skipped with REASON. Only for what CI does not have (a GPU, a
  W&B account online, ImageNet, a GPU cluster), for the test command itself (the suite would
  run itself; ``.ci/run`` runs it), and for setting up the machine as root (``.ci/run`` does).
- ``<!-- slow: REASON -->``: the real thing (the README's default ablation, in fp32 on any CPU),
  given a longer limit.
- ``<!-- needs slurm: REASON -->``: runs against the two-node cluster of ``.ci/slurm-up.sh``
  (marked ``slurm``); skipped when it is not up (failing under ``CI=true``, as
  tests/test_slurm.py does). The jobs the block submitted are cancelled after it.

Every block is in the ``slow`` tier (``python -m pytest -m slow``), about 3 minutes on a quiet
2-core CPU without the default ablation.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SHELL = {"bash", "sh", "shell", "console"}
FENCE = re.compile(r"^(\s*)(```+|~~~+)\s*([\w-]*)")
MARK = re.compile(r"^\s*<!--\s*(not run|slow|needs slurm):\s*(.+?)\s*-->\s*$")
SLURM_CONF = "/etc/slurm-bench/slurm.conf"
TIMEOUT_S = {None: 300, "slow": 900, "needs slurm": 300}


@dataclass(frozen=True)
class Block:
    """One shell block of a doc: where it starts, its commands and its mark."""

    doc: str       # relative to the repository root
    line: int      # 1-based line of the opening fence
    code: str
    mark: Optional[str] = None
    reason: str = ""

    def __str__(self) -> str:
        return f"{self.doc}:{self.line}"


def shell_blocks(path: Path) -> list[Block]:
    """The fenced shell blocks of a Markdown file, dedented to their fence, with their marks."""
    lines, blocks, i = path.read_text().splitlines(), [], 0
    while i < len(lines):
        fence = FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        indent, ticks, lang = fence.groups()
        end = next((j for j in range(i + 1, len(lines)) if lines[j].strip().startswith(ticks)), len(lines))
        body = [line[len(indent):] if line.startswith(indent) else line.lstrip() for line in lines[i + 1:end]]
        if lang in SHELL:
            if lang == "console":
                body = [line[2:] for line in body if line.startswith("$ ")]
            above = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
            mark = MARK.match(above)
            blocks.append(Block(str(path.relative_to(ROOT)), i + 1, "\n".join(body) + "\n",
                                *(mark.groups() if mark else ())))
        i = end + 1
    return blocks


BLOCKS = [block for doc in DOCS for block in shell_blocks(doc)]


def copy_checkout(dest: Path) -> Path:
    """The files git tracks or would track (edits not yet committed included), copied to `dest`."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():   # a tracked file deleted in the working tree is not copied
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def slurm_missing() -> str:
    """Why the two-node cluster cannot be used here, or "" when it answers."""
    if shutil.which("sbatch") is None or not Path(SLURM_CONF).is_file():
        return f"no sbatch on PATH or no {SLURM_CONF}"
    proc = subprocess.run(["sinfo", "-h"], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "SLURM_CONF": SLURM_CONF})
    return "" if proc.returncode == 0 else f"sinfo failed: {proc.stderr.strip()[:200]}"


def cancel_jobs(repo: Path) -> None:
    """Cancel the SLURM jobs a block submitted (their ids are in the run directories' job.json)."""
    ids = [json.loads(p.read_text())["job_id"] for p in repo.rglob("job.json")]
    if ids:
        subprocess.run(["scancel", *map(str, ids)], env={**os.environ, "SLURM_CONF": SLURM_CONF}, timeout=60)


def skip_reason(block: Block) -> str:
    """Why a block does not run here, or "" when it does."""
    if block.mark == "not run":
        return f"{block}: not run: {block.reason}"
    if block.mark == "needs slurm":
        why = slurm_missing()
        if why and os.environ.get("CI") == "true":
            pytest.fail(f"the two-node SLURM cluster is not up ({why}); as root: .ci/slurm-up.sh")
        return f"{block}: needs the two-node SLURM cluster of .ci/slurm-up.sh ({why})" if why else ""
    return ""


def test_every_doc_has_its_shell_blocks_found():
    """The parser sees the blocks (a changed fence style would otherwise skip them silently)."""
    assert {b.doc for b in BLOCKS} >= {"README.md", "docs/cluster.md", "docs/recipes.md", "docs/wandb.md"}
    assert all(b.code.strip() for b in BLOCKS), [str(b) for b in BLOCKS if not b.code.strip()]
    for doc in DOCS:   # a mark with a typo, or away from its block, would leave the block unmarked
        lines = doc.read_text().splitlines()
        for n, line in enumerate(lines, start=1):
            if re.match(r"^\s*<!--\s*(not[ -]?run|slow|needs)", line):
                where = f"{doc.relative_to(ROOT)}:{n}"
                assert MARK.match(line), f"{where}: malformed mark {line.strip()!r}"
                after = next((x for x in lines[n:] if x.strip()), "")
                fence = FENCE.match(after)
                assert fence and fence.group(3) in SHELL, f"{where}: a mark must come right before a shell block"


@pytest.mark.parametrize("block", [pytest.param(b, marks=pytest.mark.slurm if b.mark == "needs slurm" else pytest.mark.slow)
                                   for b in BLOCKS], ids=str)
def test_doc_block_runs(block: Block, tmp_path: Path):
    why = skip_reason(block)
    if why:
        pytest.skip(why)
    repo = copy_checkout(tmp_path / "repo")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    code = re.sub(r"(?<![\w.~-])/tmp/", f"{scratch}/", block.code)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "WANDB_MODE": "offline", "TMPDIR": str(scratch), "MPLBACKEND": "Agg"}
    if block.mark == "needs slurm":
        env["SLURM_CONF"] = SLURM_CONF
    try:
        proc = subprocess.run(["bash", "-euo", "pipefail", "-c", code], cwd=repo, env=env, capture_output=True,
                              text=True, timeout=TIMEOUT_S[block.mark])
    finally:
        if block.mark == "needs slurm":
            cancel_jobs(repo)
    assert proc.returncode == 0, (f"{block} exited with {proc.returncode}\n--- block\n{block.code}"
                                  f"--- stdout (end)\n{proc.stdout[-3000:]}\n--- stderr (end)\n{proc.stderr[-3000:]}")
