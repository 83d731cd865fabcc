"""A task is declared as named terms, as in mjlab and Isaac Lab: each term names a function from one of
the shared term modules here and gives its parameters, so a new task or robot is a new config.

- rewards.py: `fn(env, **params) -> (num_envs,)`, summed with weights per second of simulated time;
- terminations.py: `fn(env, **params) -> (num_envs,)` bool, one per named reason an episode ends;
- events.py: randomization at startup (model variants), at reset (per-episode parameters) and at an
  interval (pushes); every value an event draws is a named column of `env.params`, which the critic sees;
- curricula.py: levels in [0, 1] that scale a task's ranges, moved by training progress;
- commands.py: what an operator asks (a velocity, a target), drawn at reset and every `resample_s`;
- observations.py: the critic's privileged terms (the policy's are the PolicySpec's, deploy.signals).

A term's function and parameters are checked when the env is built, before anything runs; an unknown
function or parameter is a ConfigError naming the term.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from config.validate import ConfigError

Param = (
    float | str | tuple[float, ...]
)  # a number, a name (an observation term, a reward), a (low, high) range or a vector


@dataclass(frozen=True)
class RewardTerm:
    func: str  # a function of sim/terms/rewards.py
    weight: float  # per second of simulated time
    params: dict[str, Param] = field(default_factory=dict)


@dataclass(frozen=True)
class Term:
    func: str  # a function (or event, command, curriculum class) of the group's module, by name
    params: dict[str, Param] = field(default_factory=dict)


class TerminationTerm(Term):
    """func: sim/terms/terminations.py"""


class EventTerm(Term):
    """func: sim/terms/events.py (its mode, startup, reset or interval, is the event's own)"""


class CommandTerm(Term):
    """func: sim/terms/commands.py"""


class CurriculumTerm(Term):
    """func: sim/terms/curricula.py"""


def lookup(registry: dict[str, Callable], kind: str, where: str, func: str, params: dict) -> Callable:
    """`registry[func]`, after checking that it takes `params` (besides the env): the error names the
    term (`where`, e.g. `task.rewards.pos_error`) and what it could have been."""
    if func not in registry:
        raise ConfigError(f"{where}.func: no {kind} '{func}' (have: {', '.join(sorted(registry))})")
    fn = registry[func]
    sig = inspect.signature(fn)
    names = [p for p in sig.parameters if p not in ("self", "env")]
    for p, v in params.items():
        if p not in names:
            raise ConfigError(
                f"{where}.params.{p}: {kind} '{func}' takes no parameter '{p}' (takes: {', '.join(names) or 'none'})"
            )
        if isinstance(v, tuple) and len(v) == 2 and v[0] > v[1]:
            raise ConfigError(f"{where}.params.{p}: a range is (low, high) with low <= high, got {v!r}")
    missing = [p for p in names if sig.parameters[p].default is inspect.Parameter.empty and p not in params]
    if missing:
        raise ConfigError(f"{where}.params: {kind} '{func}' needs {', '.join(missing)}")
    return fn


def registry(*fns) -> dict[str, Callable]:
    return {fn.__name__: fn for fn in fns}


def term_param(terms: dict, func: str, param: str, default: Any = None) -> Any:
    """The parameter `param` of the first of `terms` that uses `func` (e.g. the crash height of the
    `base_below` termination, for a task's log metrics), else `default`."""
    return next((t.params.get(param, default) for t in terms.values() if t.func == func), default)
