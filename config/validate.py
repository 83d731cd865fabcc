"""Typed dataclass configs: validated at start, overridable by dotted path from the command line."""

from __future__ import annotations

import dataclasses
import math
import typing


class ConfigError(ValueError):
    """A config field has a bad value; the message names the field."""


def validate(cfg, prefix: str = "") -> None:
    """Check every field against its annotation; ranges (annotated `tuple[X, X]`) need lo <= hi.

    Fields may add a `check` in their metadata: a predicate and a sentence of what it requires.
    """
    hints = typing.get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        name = f"{prefix}{f.name}"
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            validate(value, prefix=f"{name}.")
            continue
        hint = hints[f.name]
        if typing.get_origin(hint) is dict and dataclasses.is_dataclass(typing.get_args(hint)[1]):
            _check_type(name, value, dict)
            for key, item in value.items():  # a task's terms, by name
                if not isinstance(item, typing.get_args(hint)[1]):
                    raise ConfigError(f"{name}.{key}: expected {typing.get_args(hint)[1].__name__}, got {item!r}")
                validate(item, prefix=f"{name}.{key}.")
            continue
        _check_type(name, value, hints[f.name])
        is_range = (
            typing.get_origin(hints[f.name]) is tuple
            and len(typing.get_args(hints[f.name])) == 2
            and Ellipsis not in typing.get_args(hints[f.name])
        )
        if is_range and all(isinstance(v, (int, float)) for v in value):
            if value[0] > value[1]:
                raise ConfigError(f"{name}: range low {value[0]} exceeds high {value[1]}")
        check = f.metadata.get("check")
        if check is not None and not check[0](value):
            raise ConfigError(f"{name}: {check[1]}, got {value!r}")


NOISE_DISTRIBUTIONS = ("uniform", "gaussian")


def noise_distribution(default: str):
    """The `distribution` field of a sensor-noise config, checked against NOISE_DISTRIBUTIONS."""
    return dataclasses.field(
        default=default,
        metadata={"check": (lambda v: v in NOISE_DISTRIBUTIONS, f"must be one of {NOISE_DISTRIBUTIONS}")},
    )


@dataclasses.dataclass(frozen=True)
class SensorNoiseCfg:
    """What every task's sensor-noise config shares: the distribution of the zero-mean noise whose
    standard deviations the task's fields give (see BatchedEnv.sensor_noise)."""

    distribution: str = noise_distribution("uniform")


def positive(what: str = "must be > 0"):
    return {"check": (lambda v: v > 0, what)}


def nonnegative(what: str = "must be >= 0"):
    return {"check": (lambda v: v >= 0, what)}


def _check_type(name: str, value, hint) -> None:
    origin = typing.get_origin(hint)
    if hint is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    elif hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif hint in (str, bool, dict):
        ok = isinstance(value, hint)
    elif origin is tuple:
        args = typing.get_args(hint)
        ok = isinstance(value, tuple) and ((len(args) == 2 and args[1] is Ellipsis) or len(value) == len(args))
        if ok:
            for i, v in enumerate(value):
                _check_type(f"{name}[{i}]", v, args[0] if args[-1] is Ellipsis else args[i])
    elif origin is dict:
        ok = isinstance(value, dict)
        if ok:
            for k, v in value.items():
                _check_type(f"{name}.{k}", v, typing.get_args(hint)[1])
    elif origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        errors = 0
        for arg in typing.get_args(hint):
            try:
                if arg is type(None):
                    if value is not None:
                        raise ConfigError("")
                else:
                    _check_type(name, value, arg)
            except ConfigError:
                errors += 1
        ok = errors < len(typing.get_args(hint))
    else:
        ok = True
    if not ok:
        raise ConfigError(f"{name}: expected {_type_name(hint)}, got {value!r}")


def _type_name(hint) -> str:
    return getattr(hint, "__name__", str(hint))


def override(cfg, dotted: str, value, prefix: str = ""):
    """Return a copy of `cfg` with the field at `dotted` (e.g. `reward.pos_error`) set to `value`.

    `value` may be a string from the command line; it is parsed as Python literal where possible.
    `prefix` is how the user names `cfg` (e.g. `task.`), for error messages.
    """
    import ast

    head, _, rest = dotted.partition(".")
    names = [f.name for f in dataclasses.fields(cfg)]
    if head not in names:
        raise ConfigError(f"unknown config field '{prefix}{dotted}' (fields here: {', '.join(names)})")
    current = getattr(cfg, head)
    if rest:
        return dataclasses.replace(cfg, **{head: _override_in(current, rest, value, f"{prefix}{head}.")})
    return dataclasses.replace(cfg, **{head: _parse(value, ast)})


def _override_in(current, dotted: str, value, prefix: str):
    """`current` (a config dataclass, or a dict of values or of config dataclasses: a task's terms) with
    the item at `dotted` set to `value`."""
    import ast

    if dataclasses.is_dataclass(current):
        return override(current, dotted, value, prefix)
    if not isinstance(current, dict):
        raise ConfigError(f"config field '{prefix[:-1]}' has no sub-field '{dotted}'")
    key, _, rest = dotted.partition(".")
    if key not in current:
        raise ConfigError(f"unknown config key '{prefix}{key}' (keys: {', '.join(current)})")
    new = dict(current)
    new[key] = _override_in(current[key], rest, value, f"{prefix}{key}.") if rest else _parse(value, ast)
    return new


def _parse(value, ast):
    if not isinstance(value, str):
        return value
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError):
        return value
    return tuple(parsed) if isinstance(parsed, list) else parsed


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(cls, d: dict):
    """Rebuild a config dataclass from `to_dict` output (lists back to tuples)."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in d:
            continue
        v = d[f.name]
        h = hints[f.name]
        if dataclasses.is_dataclass(h):
            v = from_dict(h, v)
        elif typing.get_origin(h) is dict and dataclasses.is_dataclass(typing.get_args(h)[1]):
            v = {k: from_dict(typing.get_args(h)[1], item) for k, item in v.items()}
        elif isinstance(v, dict):
            v = {k: tuple(item) if isinstance(item, list) else item for k, item in v.items()}
        elif isinstance(v, list):
            v = tuple(v)
        kwargs[f.name] = v
    unknown = set(d) - {f.name for f in dataclasses.fields(cls)}
    if unknown:
        raise ConfigError(f"unknown config fields: {sorted(unknown)}")
    return cls(**kwargs)
