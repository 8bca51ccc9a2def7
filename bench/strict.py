"""Base class of every config section: frozen, strict about unknown keys and types; and which of
its keys say what a run *is* (its experiment) and which only how it executes."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field
from pydantic_core import to_jsonable_python


class Strict(BaseModel):
    """A config section: unknown keys and wrong types are errors, values never change after load;
    no number is infinite or NaN (`lr: .inf` would reach the optimizer)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=False, validate_default=True, allow_inf_nan=False)


def execution(default: Any, **kwargs: Any) -> Any:
    """A key of how a run executes (where, on how many threads or workers, how often it checks
    and checkpoints), not of what it computes: never part of a run's identity, so it may change
    when a run resumes. Every other key is part of the experiment."""
    return Field(default, json_schema_extra={"execution": True}, **kwargs)


def is_execution(section: type[BaseModel], key: str) -> bool:
    return bool((section.model_fields[key].json_schema_extra or {}).get("execution"))


def experiment(section: Strict) -> dict[str, Any]:
    """The experiment keys of `section` that differ from their defaults, nested as the config is:
    a section switched on (a trick whose default is None) is present even with all its defaults.
    A key added with a default that keeps the old behaviour changes no run's identity."""
    diff: dict[str, Any] = {}
    for key, field in type(section).model_fields.items():
        if is_execution(type(section), key):
            continue
        value, default = getattr(section, key), field.get_default(call_default_factory=True)
        if isinstance(value, Strict):
            inner = experiment(value)
            if inner or not isinstance(default, Strict):
                diff[key] = inner
        elif field.is_required() or to_jsonable_python(value) != to_jsonable_python(default):
            diff[key] = to_jsonable_python(value)
    return diff


def flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested mapping as dotted keys; an empty mapping (a section on with its defaults) is a leaf."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out
