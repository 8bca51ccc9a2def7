"""Checks on planned runs that need no training, so bad input stops before anything is written."""
from __future__ import annotations

import json
import os
import re
from typing import Iterable

from bench.errors import ConfigError

SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)


def secret_values(env=None) -> dict[str, str]:
    """Values of the environment variables whose names say they are secrets (8+ characters)."""
    env = os.environ if env is None else env
    return {name: value for name, value in env.items() if SECRET_NAME.search(name) and len(value) >= 8}


def check_specs(specs: Iterable, where: str) -> None:
    """Every model name is known to timm (or bench.models), and no config carries a secret,
    since configs are written to config.yaml, final.json and W&B."""
    import timm

    from bench.models import LOCAL_MODELS

    secrets = secret_values()
    seen: set[str] = set()
    for spec in specs:
        cfg = spec.config
        label = f"{where}: {'teacher' if spec.role == 'teacher' else f'model {spec.model!r}, step'} {spec.step!r}"
        if cfg.model.name not in seen:
            seen.add(cfg.model.name)
            if cfg.model.name not in LOCAL_MODELS and not timm.is_model(cfg.model.name):
                close = timm.list_models(f"*{cfg.model.name.split('_')[0][:6]}*")[:5]
                hint = f" (similar: {', '.join(close)})" if close else ""
                raise ConfigError(f"{label}: model.name = {cfg.model.name!r}: unknown model{hint}")
        blob = json.dumps(cfg.model_dump(mode="json"))
        for name, value in secrets.items():
            if value in blob:
                raise ConfigError(f"{label}: the config holds the value of ${name}; secrets are never written to "
                                  "configs (W&B reads its key from the environment)")
