"""RobotCfg: a robot as the tasks, the simulated robot and the deploy side see it, loaded from YAML.

A robot is an MJCF model plus this config: its kind, the names of what the tasks use (base body,
joints in wire order, feet, end effector, rotors, IMU) and the numbers the model does not say (default
pose, drive gains and limits, rotor thrust and torque coefficients, control rate). Nothing is found by
naming convention. `problems()` lists everything wrong with the config on its own; sim.robots adds
what is wrong against the model, and both are reported together before anything runs.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path

from config.validate import ConfigError

BUILTIN_ROBOTS_DIR = Path(__file__).resolve().parents[1] / "sim" / "robots"  # NAME.yaml + its MJCF
KINDS = ("multirotor", "legged", "arm")
DRIVES = ("torque_pd", "position_servo")
GRAVITY_MPS2 = 9.81
MIN_THRUST_TO_WEIGHT = 1.5  # below this a multirotor cannot both hover and correct


class UnknownRobotError(KeyError):
    def __str__(self) -> str:
        return self.args[0]


class RobotConfigError(ConfigError):
    """Everything wrong with a robot config (and its model), one problem a line."""

    def __init__(self, source: str, problems: list[str]):
        self.source, self.problems = source, list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"robot config {source}: {len(self.problems)} problem(s):\n{lines}")


@dataclass(frozen=True)
class JointsCfg:
    """Actuated joints, in the robot's wire order (the policy's action order)."""

    names: tuple[str, ...]
    default_pos_rad: tuple[float, ...]  # the pose the policy's zero action holds
    kp: tuple[float, ...]  # N m/rad, one for all or one per joint
    kd: tuple[float, ...]  # N m s/rad
    effort_limit_Nm: tuple[float, ...]  # drive torque limit, one for all or one per joint
    # torque_pd: a motor driver runs PD on position targets (Unitree-style); position_servo: the servo's
    # own position loop does (Dynamixel), with these gains set in the servo at start
    drive: str = "torque_pd"

    def per_joint(self, name: str) -> tuple[float, ...]:
        values = getattr(self, name)
        return values * len(self.names) if len(values) == 1 else values


@dataclass(frozen=True)
class FeetCfg:
    names: tuple[str, ...]  # labels (e.g. FL, FR, RL, RR), in the order foot readings are reported
    geoms: tuple[str, ...]  # the collision geom of each foot


@dataclass(frozen=True)
class MirrorCfg:
    """The robot's left-right mirror image (y -> -y in the base frame), for training with symmetry
    augmentation (`--ppo.symmetry`). A joint's or foot's mirror is its name with each `swap` pair
    exchanged, token by token between underscores (FR_hip_joint <-> FL_hip_joint)."""

    swap: tuple[tuple[str, str], ...]  # name tokens that trade places, e.g. [[FR, FL], [RR, RL]]
    negate: tuple[str, ...] = ()  # joints whose angle changes sign in the mirror (hip abduction)

    def image(self, name: str) -> str:
        pairs = {a: b for a, b in self.swap} | {b: a for a, b in self.swap}
        return "_".join(pairs.get(token, token) for token in name.split("_"))


@dataclass(frozen=True)
class RotorsCfg:
    names: tuple[str, ...]  # motor names in wire order (the policy's action order)
    sites: tuple[str, ...]  # MJCF sites; thrust acts along each site's z axis
    spin: tuple[int, ...]  # +1: reaction torque about +z of the body (rotor turns clockwise seen from above), -1
    max_thrust_N: float  # per rotor
    torque_per_thrust_m: float  # yaw reaction torque per newton of thrust
    thrust_coef_N_per_radps2: float = 0.0  # thrust = c * speed^2; 0 when unknown (no rotor-speed readings)


@dataclass(frozen=True)
class RobotCfg:
    name: str  # PolicySpec.robot
    kind: str  # one of KINDS: which tasks can run on it
    model: str  # MJCF path, relative to the config file
    control_hz: float  # policy rate; the model's timestep must divide its period
    base_body: str = ""  # the floating base (multirotor, legged); an arm's base is fixed
    mass_kg: float = 0.0  # if given, the model's total mass must agree within 2 %
    imu_site: str = ""  # where the IMU sits, if the robot has one
    joints: JointsCfg | None = None  # legged, arm
    feet: FeetCfg | None = None  # legged
    base_height_m: float = 0.0  # legged: base height when standing at the default pose
    floor_geom: str = ""  # legged: the model's floor; empty: the simulation adds one
    end_effector_site: str = ""  # arm
    payload_body: str = ""  # arm: the body whose mass stands in for a payload; empty: one is added at the end effector
    rotors: RotorsCfg | None = None  # multirotor
    mirror: MirrorCfg | None = None  # legged: its left-right mirror image, for symmetry augmentation
    # per-task config overrides for this robot, by dotted field name
    # (e.g. arm-reach: {commands.target.params.center_m: [..]})
    task_overrides: dict[str, dict[str, typing.Any]] = field(default_factory=dict)
    source: str = ""  # the YAML file it was read from (set by load_robot_cfg)

    @property
    def model_path(self) -> Path:
        base = Path(self.source).parent if self.source else Path(".")
        return (base / self.model).resolve()

    @property
    def actuator_names(self) -> tuple[str, ...]:
        """What the policy's action drives, in wire order: joints or rotors."""
        if self.kind == "multirotor":
            return self.rotors.names if self.rotors else ()
        return self.joints.names if self.joints else ()

    def problems(self) -> list[str]:
        """Everything wrong with the config on its own (the model is checked in sim.robots)."""
        out: list[str] = []
        if not self.name:
            out.append("name: must not be empty")
        if self.kind not in KINDS:
            out.append(f"kind: '{self.kind}' is not one of {KINDS}")
        if not (self.control_hz > 0 and math.isfinite(self.control_hz)):
            out.append(f"control_hz: must be > 0, got {self.control_hz}")
        needs = {
            "multirotor": ("base_body", "rotors"),
            "legged": ("base_body", "joints", "feet", "base_height_m"),
            "arm": ("joints", "end_effector_site"),
        }.get(self.kind, ())
        for name in needs:
            if not getattr(self, name):
                out.append(f"{name}: a {self.kind} robot needs it")
        if self.mass_kg < 0:
            out.append(f"mass_kg: must be >= 0, got {self.mass_kg}")
        if self.joints is not None:
            j = self.joints
            n = len(j.names)
            out += _name_problems("joints.names", j.names)
            if len(j.default_pos_rad) != n:
                out.append(f"joints.default_pos_rad: {len(j.default_pos_rad)} values for {n} joints")
            for name in ("kp", "kd", "effort_limit_Nm"):
                values = getattr(j, name)
                if len(values) not in (1, n):
                    out.append(f"joints.{name}: {len(values)} values for {n} joints (give one for all, or one each)")
                bad = [v for v in values if not v > 0 and not (name == "kd" and v == 0)]
                if bad:
                    out.append(f"joints.{name}: must be > 0, got {bad}")
            if j.drive not in DRIVES:
                out.append(f"joints.drive: '{j.drive}' is not one of {DRIVES}")
        if self.feet is not None and len(self.feet.names) != len(self.feet.geoms):
            out.append(f"feet: {len(self.feet.names)} names but {len(self.feet.geoms)} geoms")
        if self.mirror is not None:
            out += self._mirror_problems(self.mirror)
        if self.rotors is not None:
            r = self.rotors
            n = len(r.names)
            out += _name_problems("rotors.names", r.names)
            for name in ("sites", "spin"):
                if len(getattr(r, name)) != n:
                    out.append(f"rotors.{name}: {len(getattr(r, name))} values for {n} rotors")
            if any(s not in (-1, 1) for s in r.spin):
                out.append(f"rotors.spin: each must be +1 or -1, got {list(r.spin)}")
            if not r.max_thrust_N > 0:
                out.append(f"rotors.max_thrust_N: must be > 0, got {r.max_thrust_N}")
            if r.torque_per_thrust_m < 0 or r.thrust_coef_N_per_radps2 < 0:
                out.append("rotors: torque_per_thrust_m and thrust_coef_N_per_radps2 must be >= 0")
        return out

    def _mirror_problems(self, m: MirrorCfg) -> list[str]:
        out = [f"mirror.swap[{i}]: a pair is two names, got {list(p)}" for i, p in enumerate(m.swap) if len(p) != 2]
        tokens = [t for p in m.swap for t in p]
        if len(set(tokens)) != len(tokens):
            out.append(f"mirror.swap: a name may be in one pair only, got {[list(p) for p in m.swap]}")
        if out:
            return out
        joints = self.joints.names if self.joints else ()
        for group, names in (("joints.names", joints), ("feet.names", self.feet.names if self.feet else ())):
            lost = [f"{n} -> {m.image(n)}" for n in names if m.image(n) not in names]
            if lost:
                lost_text = ", ".join(lost)
                out.append(f"mirror.swap: the mirror image of each of {group} must be one of them, not: {lost_text}")
        unknown = [n for n in m.negate if n not in joints]
        if unknown:
            out.append(f"mirror.negate: not joints of this robot: {unknown}")
        odd = [f"{n} / {m.image(n)}" for n in m.negate if m.image(n) not in m.negate]
        if odd:
            out.append(f"mirror.negate: a joint and its mirror image change sign together: {', '.join(odd)}")
        return out


def _name_problems(field: str, names: tuple[str, ...]) -> list[str]:
    dup = sorted({x for x in names if names.count(x) > 1})
    return ([f"{field}: must name at least one"] if not names else []) + (
        [f"{field}: named twice: {dup}"] if dup else []
    )


def _convert(value, hint, where: str, problems: list[str]):
    """YAML value -> the annotated type (lists to tuples, ints to floats, mappings to dataclasses)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        inner = [a for a in args if a is not type(None)]
        return None if value is None else _convert(value, inner[0], where, problems)
    if dataclasses.is_dataclass(hint):
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping of fields, got {value!r}")
            return None
        return _build(hint, value, where + ".", problems)
    if origin is tuple:
        if isinstance(value, (int, float, str)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            problems.append(f"{where}: expected a list, got {value!r}")
            return ()
        return tuple(_convert(v, args[0], f"{where}[{i}]", problems) for i, v in enumerate(value))
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            problems.append(f"{where}: expected a number, got {value!r}")
            return 0.0
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            problems.append(f"{where}: expected a whole number, got {value!r}")
            return 0
        return value
    if hint is str:
        if not isinstance(value, str):
            problems.append(f"{where}: expected text, got {value!r}")
            return ""
        return value
    if origin is dict:
        if not isinstance(value, dict):
            problems.append(f"{where}: expected a mapping, got {value!r}")
            return {}
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in value.items()}
    return value


def _build(cls, d: dict, prefix: str, problems: list[str]):
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for name in sorted(set(d) - set(fields)):
        problems.append(f"{prefix}{name}: unknown field (fields: {', '.join(n for n in fields if n != 'source')})")
    kwargs = {}
    for name, f in fields.items():
        if name in d:
            kwargs[name] = _convert(d[name], hints[name], prefix + name, problems)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            problems.append(f"{prefix}{name}: missing")
            kwargs[name] = (
                _convert([], hints[name], prefix + name, [])
                if typing.get_origin(hints[name]) is tuple
                else hints[name]()
            )
    return cls(**kwargs)


def robot_cfg_from_dict(d, source: str = "robot config") -> RobotCfg:
    """Build and check a RobotCfg; RobotConfigError lists every problem at once."""
    if not isinstance(d, dict):
        raise RobotConfigError(source, [f"expected a mapping of fields, got {type(d).__name__}"])
    problems: list[str] = []
    cfg = _build(RobotCfg, {k: v for k, v in d.items() if k != "source"}, "", problems)
    cfg = dataclasses.replace(cfg, source=source)
    problems += cfg.problems()
    if problems:
        raise RobotConfigError(source, problems)
    return cfg


def load_robot_cfg(path: str | Path) -> RobotCfg:
    import yaml

    path = Path(path)
    try:
        d = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise RobotConfigError(str(path), [f"cannot read: {e}"]) from e
    return robot_cfg_from_dict(d, source=str(path.resolve()))


def hover_thrust_to_weight(cfg: RobotCfg, mass_kg: float) -> float:
    if cfg.rotors is None:
        raise ValueError(f"robot {cfg.name} has no rotors")
    return len(cfg.rotors.names) * cfg.rotors.max_thrust_N / (mass_kg * GRAVITY_MPS2)


def robot_names() -> list[str]:
    """The built-in robots (sim/robots/NAME.yaml)."""
    return sorted(p.stem for p in BUILTIN_ROBOTS_DIR.glob("*.yaml"))


def find_robot(name_or_path: str) -> RobotCfg:
    """A built-in robot by name, or a robot config YAML by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise UnknownRobotError(f"robot config not found: {path}")
        return load_robot_cfg(path)
    if (BUILTIN_ROBOTS_DIR / f"{name_or_path}.yaml").is_file():
        return load_robot_cfg(BUILTIN_ROBOTS_DIR / f"{name_or_path}.yaml")
    raise UnknownRobotError(
        f"unknown robot '{name_or_path}'; built-in robots: {', '.join(robot_names())} (or give a path to a robot YAML)"
    )
