"""Base class of every config section: frozen, strict about unknown keys and types."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    """A config section: unknown keys and wrong types are errors, values never change after load."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=False, validate_default=True)
