"""The search space: draw a trial's values from `tune.space`, and put them into a config by dotted key.

A trial's config is the searched config written out whole (to_yaml: every default explicit) with the
drawn values set at their keys, validated as any config is; so a drawn value that the schema rejects
is the same one-line error as in a file. check_space() tries every end of every range and every
choice before the first trial, so a bad space exits 2 before any training.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import yaml

from retune.config import ParamSpace, RetuneConfig, TuneConfig, key_parts, to_yaml, validate
from retune.errors import UsageError


def base_raw(cfg: RetuneConfig) -> dict[str, Any]:
    """The config as a plain mapping, every default explicit, without its tune: section."""
    raw = yaml.safe_load(to_yaml(cfg))
    raw.pop("tune", None)
    return raw


def set_key(raw: dict[str, Any], key: str, value: Any) -> None:
    """raw[...] at a dotted key (retention[0].weight); list items must exist, sections are made."""
    parts = key_parts(key)
    node: Any = raw
    for i, p in enumerate(parts[:-1]):
        if isinstance(p, int):
            if not isinstance(node, list) or p >= len(node):
                n = len(node) if isinstance(node, list) else 0
                where = ".".join(str(x) for x in parts[:i]) or key
                raise UsageError(f"tune.space: {key}: the config's {where} has {n} item(s); add item {p} to the config first")
            node = node[p]
            continue
        if node.get(p) is None:
            node[p] = {}
        node = node[p]
    last = parts[-1]
    if isinstance(last, int) or not isinstance(node, dict):
        raise UsageError(f"tune.space: {key} is not a key of a section")
    node[last] = value


def trial_config(raw: dict[str, Any], params: dict[str, Any], output: dict[str, Any] | None = None) -> RetuneConfig:
    """The searched config with a trial's values (and output keys) set, validated."""
    out = copy.deepcopy(raw)
    for key, value in params.items():
        set_key(out, key, value)
    if output:
        out["output"] = {**out.get("output", {}), **output}
    try:
        return validate(out)
    except UsageError as e:
        shown = ", ".join(f"{k}={v}" for k, v in params.items())
        raise UsageError(f"tune.space: {shown}: {e}") from None


def corners(space: dict[str, ParamSpace]) -> list[dict[str, Any]]:
    """Each key at each end of its range or each of its choices, the other keys at their first value."""

    def values(p: ParamSpace) -> list[Any]:
        return list(p.choice) if p.choice is not None else list(getattr(p, p.kind))

    first = {k: values(p)[0] for k, p in space.items()}
    return [{**first, k: v} for k, p in space.items() for v in values(p)]


def check_space(raw: dict[str, Any], tune: TuneConfig) -> None:
    """Every range end and choice makes a valid config: exit 2 before any trial otherwise."""
    if not tune.space:
        raise UsageError("tune.space is empty: give config keys to search, e.g. tune: {space: {trainer.lr: {loguniform: [1e-5, 1e-3]}}}")
    for params in corners(tune.space):
        trial_config(raw, params)


def suggest(trial: Any, space: dict[str, ParamSpace]) -> dict[str, Any]:
    """A trial's values, drawn through Optuna's trial.suggest_* (so samplers see the distributions)."""
    out: dict[str, Any] = {}
    for key, p in space.items():
        if p.loguniform is not None:
            out[key] = trial.suggest_float(key, *p.loguniform, log=True)
        elif p.uniform is not None:
            out[key] = trial.suggest_float(key, *p.uniform)
        elif p.int is not None:
            out[key] = trial.suggest_int(key, *p.int)
        else:
            assert p.choice is not None
            out[key] = trial.suggest_categorical(key, p.choice)
    return out


def finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)
