"""Pydantic errors as one line: where, the dotted key, its value, what is wrong."""
from __future__ import annotations

import difflib
import typing
from typing import Any, Optional, TypeVar

from pydantic import BaseModel, ValidationError

from bench.errors import ConfigError

M = TypeVar("M", bound=BaseModel)

MAX_NODES = 100_000   # values in a recipe once its YAML aliases are expanded; the shipped ones have ~200
MAX_DEPTH = 32        # levels of nesting; the shipped recipes have 7


def check_size(tree: Any, where: str) -> None:
    """Refuse a loaded YAML value that expands beyond a sane size: YAML aliases share a node, so
    a small file can stand for billions of values ("billion laughs") or refer to itself; each
    node is counted once with its expanded size, so the check itself stays fast."""
    sizes: dict[int, tuple[int, int]] = {}   # id → (values in it when expanded, its depth)
    open_: set[int] = set()

    def measure(node: Any, depth: int) -> tuple[int, int]:
        if not isinstance(node, (dict, list)):
            return 1, 0
        if depth >= MAX_DEPTH:
            raise ConfigError(f"{where}: nested more than {MAX_DEPTH} levels deep; a recipe is a few levels of mappings")
        if id(node) in open_:
            raise ConfigError(f"{where}: a YAML alias refers to a mapping or list that contains it; a recipe is a tree")
        if id(node) not in sizes:
            open_.add(id(node))
            count, height = 1, 0
            for child in (*node.keys(), *node.values()) if isinstance(node, dict) else node:
                n, h = measure(child, depth + 1)
                count, height = count + n, max(height, h + 1)
                if count > MAX_NODES:
                    raise ConfigError(f"{where}: expands to more than {MAX_NODES:,} values (YAML aliases repeat "
                                      "what they refer to); a recipe is a few hundred")
            open_.discard(id(node))
            sizes[id(node)] = count, height
        if depth + sizes[id(node)][1] >= MAX_DEPTH:
            raise ConfigError(f"{where}: nested more than {MAX_DEPTH} levels deep; a recipe is a few levels of mappings")
        return sizes[id(node)]

    measure(tree, 0)


def section_class(annotation: Any) -> Optional[type[BaseModel]]:
    """The config class behind a field annotation (unwrapping Optional), or None for a leaf."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = section_class(arg)
        if found is not None:
            return found
    return None


def section_keys(cls: type[BaseModel]) -> list[str]:
    """A section's keys, its own before those it inherits (alpha before off_epochs)."""
    inherited = {k for base in cls.__mro__[1:] if isinstance(base, type) and issubclass(base, BaseModel) for k in base.model_fields}
    return sorted(cls.model_fields, key=lambda k: k in inherited)


def unknown_key(key: str, cls: type[BaseModel], where: str) -> ConfigError:
    valid = section_keys(cls)
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return ConfigError(f"{where}: unknown key '{key}'{hint}; valid keys: {', '.join(valid)}")


def format_validation(err: ValidationError, cls: type[BaseModel], where: str) -> ConfigError:
    """The first pydantic error as one line: where, the dotted key, its value, what is wrong."""
    first = err.errors()[0]
    loc = [str(part) for part in first["loc"]]
    if first["type"] == "extra_forbidden":
        owner = _section_at(cls, loc[:-1]) if len(loc) > 1 else cls
        if owner is not None:
            prefix = ".".join(loc[:-1])
            return unknown_key(loc[-1], owner, f"{where}: {prefix}" if prefix else where)
    field_loc = _field_loc(cls, loc)
    if len(field_loc) < len(loc) and not loc[len(field_loc)].isdigit():   # a union (e.g. "auto" or a number): every member's complaint
        same = [e for e in err.errors() if _field_loc(cls, [str(p) for p in e["loc"]]) == field_loc]
        first = {**first, "msg": "; or ".join(dict.fromkeys(e["msg"] for e in same))}
        loc = field_loc
    key = ".".join(loc) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    section = _section_at(cls, loc)
    if first["type"] in ("model_type", "model_attributes_type", "dict_type") and section is not None:
        msg = f"expected a mapping of its keys ({', '.join(section_keys(section))})"
    value = first.get("input")
    shown = "" if isinstance(value, dict) or not loc else f" = {value!r}"
    return ConfigError(f"{where}: {key}{shown}: {msg}")


def _section_at(cls: type[BaseModel], loc: list[str]) -> Optional[type[BaseModel]]:
    """The config class of the section at dotted `loc`, None when it is a leaf."""
    owner: Any = cls
    for part in loc:
        fields = getattr(owner, "model_fields", None)
        if fields is None or part not in fields:
            return None
        owner = section_class(fields[part].annotation)
    return owner if loc else None


def _field_loc(cls: type[BaseModel], loc: list[str]) -> list[str]:
    """`loc` cut after its last field name: pydantic adds the union member's tag after it."""
    owner: Any = cls
    for i, part in enumerate(loc):
        fields = getattr(owner, "model_fields", None)
        if fields is None or part not in fields:
            return loc[:i] if fields is not None and i else loc
        owner = section_class(fields[part].annotation)
        if owner is None:
            return loc[:i + 1]
    return loc


def validate(cls: type[M], raw: Any, where: str) -> M:
    """`cls` from raw values; the first problem as a one-line `ConfigError` naming `where`."""
    try:
        return cls.model_validate(raw)
    except ValidationError as err:
        raise format_validation(err, cls, where) from None
