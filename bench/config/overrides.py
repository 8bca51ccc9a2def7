"""Changes on top of a resolved config: `--set key.path=value` (or a bare `key.path=value`),
the recipe's cumulative `set:`s (`deep_merge`), and `--smoke`'s shrunk runs."""
from __future__ import annotations

import copy
import re
import typing
from collections.abc import Collection, Iterable, Sequence
from typing import Any, Optional

import yaml
from pydantic import BaseModel

from bench.config.schema import RunConfig, ScheduleConfig
from bench.config.validation import check_size, section_class, unknown_key
from bench.errors import ConfigError


def deep_merge(base: dict, override: dict) -> dict:
    """`override` on top of `base`, recursively; a None value replaces (switches a trick off)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, refusing a mapping that holds a key twice (it keeps the last one,
    silently: `epochs: 120` then `epochs: 2` trains 2)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":   # `<<: *anchor`: its keys may be overridden here
                continue
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) or key is None:
                if key in seen:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
                seen.add(key)
        return super().construct_mapping(node, deep)


def load_yaml(text: str | bytes) -> Any:
    loader = UniqueKeyLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()


def parse_override(text: str) -> tuple[str, Any]:
    """`key.path=value` → ("key.path", value), the value read as YAML; the path checked."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected key.path=value")
    try:
        parsed = load_yaml(value) if value else None
    except (yaml.YAMLError, RecursionError, ValueError, TypeError, OverflowError):   # also a tag it does not fit: !!int x
        raise ConfigError(f"--set {text!r}: value {value!r} is not valid YAML") from None
    check_size(parsed, f"--set {key!r}")
    if key == "seed":
        raise ConfigError("--set seed: a run's seed comes from --seeds on the command line (or the recipe's seeds:)")
    cls: Optional[type[BaseModel]] = RunConfig
    parts, shown = key.split("."), key if key.isprintable() else repr(key)   # one line, whatever it holds
    for i, part in enumerate(parts):
        if cls is None:   # a free mapping such as model.kwargs
            break
        if part not in cls.model_fields:
            where = f"--set {shown}" + (f": in '{'.'.join(parts[:i])}'" if i else "")
            raise unknown_key(part if part.isprintable() else repr(part), cls, where)
        if i < len(parts) - 1:
            field = cls.model_fields[part]
            cls = section_class(field.annotation)
            if cls is None and field.annotation is not dict and typing.get_origin(field.annotation) is not dict:
                raise ConfigError(f"--set {shown}: '{'.'.join(parts[:i + 1])}' is a value, not a section")
    return key, parsed


BARE_OVERRIDE = re.compile(r"[A-Za-z_]\w*(\.\w+)*=")


def with_bare_overrides(argv: Sequence[str], takes_value: Collection[str]) -> list[str]:
    """`argv` with each bare `key.path=value` as `--set key.path=value`: how `wandb agent` passes
    a sweep's parameters (`${args_no_hyphens}`). A word is one unless it is the value of an
    option in `takes_value` (after `--out`, `a=b` is a directory); a step, model or recipe
    name holds no `=`, so one after `--only STEP ...` is an override too."""
    out: list[str] = []
    for i, word in enumerate(argv):
        bare = BARE_OVERRIDE.match(word) and not (i and argv[i - 1] in takes_value)
        out += ["--set", word] if bare else [word]
    return out


def apply_override(raw: dict, path: str, value: Any) -> dict:
    """Set `path` in a run's raw config. A path through a trick that is off (None) leaves the
    run alone, so `--set distill.temperature=4` changes only the runs that distil."""
    out = copy.deepcopy(raw)
    node, cls = out, RunConfig
    parts = path.split(".")
    for part in parts[:-1]:
        field = cls.model_fields.get(part) if cls else None
        if node.get(part) is None:
            if field is not None and field.default is None and not field.is_required():
                return raw
            node[part] = {}
        node, cls = node[part], (section_class(field.annotation) if field else None)
    node[parts[-1]] = value
    return out


def apply_overrides(raw: dict, overrides: tuple[tuple[str, Any], ...], schedule: ScheduleConfig) -> dict:
    """Every `--set` on one run's raw config, whose schedule before them is `schedule`.

    `schedule.epochs=N` alone also moves the step-decay milestones to the same fractions of the
    run's training (the paper's 30, 60, 90 of 120 epochs are its quarters): each run scales its
    own, so a mixup step of 200 epochs and one of 120 both end at N. A `schedule.milestones`
    (or a whole `schedule`) in the same overrides is taken as given.
    """
    for path, value in overrides:
        raw = apply_override(raw, path, value)
    paths = {path for path, _ in overrides}
    epochs = raw.get("schedule", {}).get("epochs") if isinstance(raw.get("schedule"), dict) else None
    if ("schedule.epochs" in paths and not paths & {"schedule", "schedule.milestones"}
            and type(epochs) is int and epochs > 0 and epochs != schedule.epochs):
        raw = apply_override(raw, "schedule.milestones", scale_milestones(schedule.milestones, schedule.epochs, epochs))
    return raw


def scale_milestones(milestones: list, from_epochs: int, to_epochs: int) -> list:
    """Milestones at the same fractions of `to_epochs` as of `from_epochs`: m·to/from, a whole
    epoch where it is one, else a fraction of one (6 decimals; the schedule takes the iteration)."""
    moved = (m * to_epochs / from_epochs for m in milestones)
    return sorted({int(x) if float(x).is_integer() else round(x, 6) for x in moved})


def stack_sets(raw: dict, sets: Sequence[dict], moved: Optional[list] = None) -> tuple[dict, Optional[list]]:
    """`sets` merged on `raw` in order (`deep_merge`), the schedule keeping its shape: a set that
    changes `schedule.epochs` and places no `schedule.milestones` moves the milestones it inherits
    to the same fractions of the new length (the paper's 30/60/90 of 120 epochs are 50/100/150 of
    200), so a trick that trains longer on a step schedule does not spend the extra epochs at
    lr/1000. Warmup stays as many epochs (the paper's).

    Returns the merged mapping and the milestones as moved (None: as merged), which `settle`
    applies once every set is on: only to a run that decays by steps (a cosine run's milestones
    are unused and kept as written). `moved` continues an earlier stack."""
    for layer in sets:
        before = raw.get("schedule") if isinstance(raw.get("schedule"), dict) else {}
        raw = deep_merge(raw, layer)
        own = layer.get("schedule")
        if not isinstance(own, dict) or "epochs" not in own:
            continue
        if "milestones" in own:
            moved = None
            continue
        old, new = before.get("epochs", ScheduleConfig().epochs), raw["schedule"].get("epochs")
        current = before.get("milestones", []) if moved is None else moved
        if type(old) is int and type(new) is int and old > 0 and new > 0 and isinstance(current, list) \
                and all(isinstance(m, (int, float)) and not isinstance(m, bool) for m in current):
            moved = scale_milestones(current, old, new)
    return raw, moved


def settle(raw: dict, moved: Optional[list]) -> dict:
    """`stack_sets`'s moved milestones in a run that decays by steps."""
    schedule = raw.get("schedule")
    if moved is not None and isinstance(schedule, dict) and schedule.get("kind", ScheduleConfig().kind) == "step":
        return {**raw, "schedule": {**schedule, "milestones": moved}}
    return raw


def smoke_config(cfg: RunConfig, kept: Iterable[str] = ()) -> RunConfig:
    """The same run shrunk to 2 epochs of 3 batches, for checking a pipeline end to end. A key
    in `kept` (the --set keys: "schedule.epochs", or a whole section "data") keeps its value, so
    that what the user set takes effect."""
    kept = tuple(kept)
    keeps = lambda key: any(key == k or key.startswith(k + ".") for k in kept)
    s = cfg.schedule
    update: dict[str, Any] = {}
    epochs = s.epochs if keeps("schedule.epochs") else min(s.epochs, 2)
    update["schedule"] = s.model_copy(update={
        "epochs": epochs, "warmup_epochs": s.warmup_epochs if keeps("schedule.warmup_epochs") else min(s.warmup_epochs, 1),
        "milestones": s.milestones if keeps("schedule.milestones") else scale_milestones(s.milestones, s.epochs, epochs)})
    shrunk = cfg.data.smoke()
    update["data"] = shrunk.model_copy(update={f: getattr(cfg.data, f) for f in type(cfg.data).model_fields
                                               if keeps(f"data.{f}")})
    ghost, batch = cfg.efficient.bn_batch_size, update["data"].global_batch_size
    if ghost is not None and not keeps("efficient.bn_batch_size"):   # slices of the smoke batch: two where it allows
        half = min(ghost, batch // 2)
        update["efficient"] = cfg.efficient.model_copy(update={"bn_batch_size": half if half >= 2 and batch % half == 0 else None})
    mixer = cfg.mixing()
    if mixer is not None:   # mix in every epoch of the two
        name = next(n for n in type(cfg).model_fields if getattr(cfg, n) is mixer)
        if not keeps(f"{name}.off_epochs"):
            update[name] = mixer.model_copy(update={"off_epochs": 0})
    return cfg.model_copy(update=update)
