"""How a W&B run starts: the mode (online / offline / disabled), the sweep a process may belong
to, and `wandb.init` with an offline fallback (wandb is imported only when logging is on).

Nothing here waits long on a network: without an API key no connection is tried; with one, the
server gets `REACHABLE_TIMEOUT_S` to answer (name lookup included), and an online start that
fails after `INIT_TIMEOUT_S` is retried offline.
"""
from __future__ import annotations

import netrc
import os
import socket
import sys
import threading
from pathlib import Path
from typing import Optional
from urllib.parse import urlparse

from bench.config import WandbConfig
from bench.errors import ConfigError, first_line

MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline", "disabled": "disabled"}
REACHABLE_TIMEOUT_S = 3.0
INIT_TIMEOUT_S = 30.0


def choose_settings(recipe: Optional[WandbConfig], flag: Optional[bool]) -> Optional[WandbConfig]:
    """`--wandb` switches logging on (with the recipe's settings, if any), `--no-wandb` off;
    without either, the recipe decides."""
    if flag is None:
        return recipe
    return (recipe or WandbConfig()) if flag else None


def warn(message: str) -> None:
    print(f"wandb: {message}", file=sys.stderr, flush=True)


def error_line(err: BaseException) -> str:
    return f"{type(err).__name__}: {first_line(err)}"


def _has_api_key(host: str) -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def _reachable(host: str, port: int, timeout_s: float = REACHABLE_TIMEOUT_S) -> bool:
    """Whether `host:port` accepts a connection within `timeout_s`, name lookup included (which
    `socket.create_connection`'s timeout does not bound: a stuck resolver can take minutes)."""
    answer: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout_s).close()
            answer.append(True)
        except OSError:
            answer.append(False)

    probe = threading.Thread(target=connect, daemon=True)
    probe.start()
    probe.join(timeout_s)
    return bool(answer and answer[0])


def resolve_mode(settings: WandbConfig) -> str:
    """online / offline / disabled: the recipe's, else $WANDB_MODE, else online only when an
    API key is known and the W&B server answers."""
    if settings.mode is not None:
        return settings.mode
    env = os.environ.get("WANDB_MODE", "").strip().lower()
    if env:
        if env not in MODES:
            raise ConfigError(f"WANDB_MODE={env!r}: expected one of {', '.join(MODES)}")
        return MODES[env]
    url = urlparse(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai"))
    host = url.hostname or "api.wandb.ai"
    if _has_api_key(host) and _reachable(host, url.port or (80 if url.scheme == "http" else 443)):
        return "online"
    return "offline"


def sweep_run_id() -> Optional[str]:
    """The run id a `wandb agent` gave this process (it sets WANDB_SWEEP_ID and WANDB_RUN_ID),
    or None outside a sweep. W&B ties every `wandb.init` of such a process to that one run."""
    if os.environ.get("WANDB_SWEEP_ID"):
        return os.environ.get("WANDB_RUN_ID") or None
    return None


def wandb_dir(out: Path) -> Path:
    """Where wandb writes its `wandb/` folder: $WANDB_DIR, else the results directory."""
    return Path(os.environ.get("WANDB_DIR") or out)


def init_run(settings: WandbConfig, out: Path, run_id: Optional[str], group: str, **kwargs):
    """wandb.init with our defaults, or None when W&B is disabled; an online start that fails is
    retried offline. `run_id` None: the sweep's run (the agent chose its id, project and entity)."""
    import wandb

    mode = resolve_mode(settings)
    if mode == "disabled":
        return None
    where = {} if run_id is None else dict(
        project=settings.project or os.environ.get("WANDB_PROJECT") or "bench",
        entity=settings.entity or os.environ.get("WANDB_ENTITY") or None, id=run_id)
    common = dict(group=group, resume="allow", dir=str(wandb_dir(out)), **where,
                  settings=wandb.Settings(console="off", silent=True, init_timeout=INIT_TIMEOUT_S), **kwargs)
    try:
        wandb_dir(out).mkdir(parents=True, exist_ok=True)
    except OSError:
        pass   # wandb says so, and falls back to a temporary folder: `used_dir` tells where
    try:
        run = wandb.init(mode=mode, **common)
    except Exception as err:
        if mode != "online":
            raise
        warn(f"online start failed ({error_line(err)}); logging offline instead")
        run = wandb.init(mode="offline", **common)
    if run is not None and mode != "online" and used_dir(run) != wandb_dir(out) / "wandb":
        warn(f"{wandb_dir(out)} is not writable: this run's files are in {used_dir(run)}")
    return run


def used_dir(run) -> Path:
    """The `wandb/` folder a run writes to: `<dir>/wandb`, or a temporary one wandb fell back to
    when `dir` was not writable."""
    return Path(run.settings.sync_dir).parent
