"""PolicySpec: the one description of the seam between a trained policy and a robot.

The training task produces it, export writes it into the ONNX file, and the robot side builds
observations and commands only from it. Observation history is laid out term-major, newest frame
first: [term0(t), term0(t-1), ..., term1(t), term1(t-1), ...].
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

SPEC_VERSION = 1
HISTORY_LAYOUT = "term_major_newest_first"
ACTION_TYPES = ("motor_thrust", "joint_position", "joint_torque")


class SpecError(ValueError):
    """A PolicySpec is malformed or does not match what it is used with."""


def _fields_from_json(d: dict) -> dict[str, Any]:
    """A JSON object's fields, its lists as tuples (the spec's sequences are tuples)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in d.items()}


@dataclass(frozen=True)
class ObsTerm:
    """One observation term: `name` is the signal it is built from (e.g. `ang_vel_b`)."""

    name: str
    names: tuple[str, ...]  # one label per element of a frame (axis or joint names)
    scale: tuple[float, ...]  # multiplies the raw signal, per element
    clip: float | None = None  # symmetric clip after scaling
    history: int = 1  # frames, newest first
    unit: str = ""

    @property
    def size(self) -> int:
        return len(self.names)

    @property
    def dim(self) -> int:
        return self.size * self.history


@dataclass(frozen=True)
class ActionSpec:
    """command = clip(offset + scale * clip(action, -clip, clip), low, high), per element."""

    type: str
    names: tuple[str, ...]  # actuator (motor or joint) names, in the policy's output order
    scale: tuple[float, ...]
    offset: tuple[float, ...]
    clip: float
    low: tuple[float, ...]  # hard command limits
    high: tuple[float, ...]
    unit: str = ""

    @property
    def size(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class SpecExtra:
    """What a task records beside the seam, for people and tools; of it, deploy uses only `command_max_rate`."""

    physics_hz: float = 0.0  # the simulation's physics rate during training
    kp: tuple[float, ...] = ()  # joint drive gains during training (one for all, or one per joint)
    kd: tuple[float, ...] = ()
    target_pos_m: tuple[float, ...] = ()  # a fixed task target (hover), world frame
    success: str = ""  # the task's success criterion, in words
    # per second, per element of the `command` reading: how fast the command the policy observes may follow the
    # operator's (a velocity smoother), as in training; empty: at once
    command_max_rate: tuple[float, ...] = ()


@dataclass(frozen=True)
class PolicySpec:
    robot: str
    task: str
    control_hz: float
    obs: tuple[ObsTerm, ...]
    action: ActionSpec
    version: int = SPEC_VERSION
    history_layout: str = HISTORY_LAYOUT
    extra: SpecExtra = field(default_factory=SpecExtra)

    def __post_init__(self) -> None:
        self.validate()

    @property
    def obs_dim(self) -> int:
        return sum(term.dim for term in self.obs)

    @property
    def action_dim(self) -> int:
        return self.action.size

    @property
    def obs_names(self) -> list[str]:
        """One label per element of the flat observation vector, in order."""
        labels = []
        for term in self.obs:
            for k in range(term.history):
                labels += [f"{term.name}[{n}]" + (f"@t-{k}" if k else "") for n in term.names]
        return labels

    def validate(self) -> None:
        def fail(msg: str) -> None:
            raise SpecError(f"PolicySpec: {msg}")

        if self.version != SPEC_VERSION:
            fail(f"version {self.version} is not supported (expected {SPEC_VERSION})")
        if self.history_layout != HISTORY_LAYOUT:
            fail(f"history_layout '{self.history_layout}' is not supported (expected {HISTORY_LAYOUT})")
        if not (self.control_hz > 0 and math.isfinite(self.control_hz)):
            fail(f"control_hz must be positive, got {self.control_hz}")
        if not self.obs:
            fail("obs has no terms")
        seen = set()
        for t in self.obs:
            if t.name in seen:
                fail(f"obs term '{t.name}' appears twice")
            seen.add(t.name)
            if t.size == 0 or len(t.scale) != t.size:
                fail(f"obs term '{t.name}': {len(t.names)} names but {len(t.scale)} scales")
            if t.history < 1:
                fail(f"obs term '{t.name}': history must be >= 1, got {t.history}")
            if t.clip is not None and not t.clip > 0:
                fail(f"obs term '{t.name}': clip must be positive, got {t.clip}")
        a = self.action
        if a.type not in ACTION_TYPES:
            fail(f"action.type '{a.type}' is not one of {ACTION_TYPES}")
        for name in ("scale", "offset", "low", "high"):
            if len(getattr(a, name)) != a.size:
                fail(f"action.{name} has {len(getattr(a, name))} values for {a.size} actuators")
        if any(lo > hi for lo, hi in zip(a.low, a.high, strict=True)):
            fail("action.low exceeds action.high")
        if not a.clip > 0:
            fail(f"action.clip must be positive, got {a.clip}")
        rate = self.extra.command_max_rate
        if rate:
            command = next((t for t in self.obs if t.name == "command"), None)
            if command is None or len(rate) != command.size or not all(r > 0 for r in rate):
                fail(
                    f"extra.command_max_rate {list(rate)}: one positive rate per element of the 'command' obs term "
                    f"({command.size if command else 'no such term'})"
                )

    # --- serialization -------------------------------------------------------------------------
    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    @classmethod
    def from_dict(cls, d: dict) -> PolicySpec:
        try:
            d = dict(d)
            obs = tuple(ObsTerm(**_fields_from_json(t)) for t in d.pop("obs"))
            action = ActionSpec(**_fields_from_json(d.pop("action")))
            extra = SpecExtra(**_fields_from_json(d.pop("extra", {})))
            return cls(obs=obs, action=action, extra=extra, **d)
        except SpecError:
            raise
        except (KeyError, TypeError, AttributeError) as e:
            raise SpecError(f"PolicySpec: malformed ({e})") from e

    @classmethod
    def from_json(cls, text: str) -> PolicySpec:
        try:
            return cls.from_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise SpecError(f"PolicySpec: not valid JSON ({e})") from e

    def check_compatible(self, other: PolicySpec) -> None:
        """Refuse to pair a policy with a robot config that differs at the seam."""
        diffs = []
        if self.robot != other.robot:
            diffs.append(f"robot: {self.robot!r} vs {other.robot!r}")
        if self.control_hz != other.control_hz:
            diffs.append(f"control_hz: {self.control_hz} vs {other.control_hz}")
        if self.action.names != other.action.names:
            diffs.append(f"action names/order: {list(self.action.names)} vs {list(other.action.names)}")
        if [t.name for t in self.obs] != [t.name for t in other.obs]:
            diffs.append(f"obs terms: {[t.name for t in self.obs]} vs {[t.name for t in other.obs]}")
        if self.obs_dim != other.obs_dim:
            diffs.append(f"obs_dim: {self.obs_dim} vs {other.obs_dim}")
        if diffs:
            raise SpecError("PolicySpec mismatch: " + "; ".join(diffs))
