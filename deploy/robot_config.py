"""RobotConfig: the robot as the deploy runtime drives it (names, wire order, limits, safe state).

`load_robot_config` builds it from three sources, each saying only what it alone knows:
- the robot config (config/robot.py, the same file training used): its name, joint or rotor names in
  wire order, default pose, control rate, drive gains and effort limits;
- the PolicySpec: the hard command limits the policy was trained with (the model's joint ranges, the
  rotors' thrust range);
- a hardware YAML (ros_ws/src/s2r_ros/config/<robot>.yaml): what is truly hardware-side: the sensor
  streams the watchdog watches, damping gains of the safe state, soft start, watchdog periods.
`check_against_spec` refuses to pair the robot with a policy that differs at the seam (robot, rate,
joint names and order, default pose), before any command is sent.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from dataclasses import dataclass
from pathlib import Path

from config.robot import RobotCfg, find_robot
from config.validate import ConfigError, validate  # stdlib and PyYAML only: no torch or mujoco behind it
from deploy.spec import ACTION_TYPES, SPEC_VERSION, PolicySpec, SpecError

__all__ = ["ConfigError", "RobotConfig", "check_against_spec", "load_robot_config"]

DEFAULT_POSE_TOL_RAD = 1e-3  # the policy's action offset is float32; the YAML writes round numbers


@dataclass(frozen=True)
class RobotConfig:
    """One robot, as the deploy runtime drives it. Vectors are per actuator, in `actuators` order."""

    robot: str  # must equal PolicySpec.robot
    control_hz: float  # policy rate; must equal PolicySpec.control_hz
    command_type: str  # one of deploy.spec.ACTION_TYPES; must equal PolicySpec.action.type
    actuators: tuple[str, ...]  # joint or motor names in the robot's wire order
    command_low: tuple[float, ...]  # hard command limits in the command's unit (rad, N m or N)
    command_high: tuple[float, ...]
    sensors: tuple[str, ...]  # sensor streams the watchdog watches (e.g. joint_state, imu)
    # joint robots only (empty for a quadrotor):
    joint_pos_low_rad: tuple[float, ...] = ()  # measured position beyond these by the margin: fault
    joint_pos_high_rad: tuple[float, ...] = ()
    joint_pos_margin_rad: float = 0.1
    torque_limit_Nm: tuple[float, ...] = ()  # for the drive's clamp; informational here
    default_pos_rad: tuple[float, ...] = ()  # soft start ramps to it; equals the policy's action offset
    damping_kd_Nms_per_rad: tuple[float, ...] = ()  # safe state: kp 0, this kd
    soft_start_s: float = 2.0  # ramp duration; ignored by a quadrotor (it arms at zero thrust)
    watchdog_periods: int = 3  # a sensor silent this many control periods is stale
    spec_version: int = SPEC_VERSION  # the PolicySpec version this config was written for

    def __post_init__(self) -> None:
        validate(self)
        n = len(self.actuators)

        def fail(name: str, msg: str) -> None:
            raise ConfigError(f"robot config {name}: {msg}")

        if not self.robot:
            fail("robot", "must not be empty")
        if not self.control_hz > 0:
            fail("control_hz", f"must be > 0, got {self.control_hz}")
        if self.command_type not in ACTION_TYPES:
            fail("command_type", f"'{self.command_type}' is not one of {ACTION_TYPES}")
        if n == 0:
            fail("actuators", "must name at least one actuator")
        dup = sorted({a for a in self.actuators if self.actuators.count(a) > 1})
        if dup:
            fail("actuators", f"names appear twice: {dup}")
        if not self.sensors:
            fail("sensors", "must name at least one sensor stream (the watchdog needs one)")
        if self.watchdog_periods < 1:
            fail("watchdog_periods", f"must be >= 1, got {self.watchdog_periods}")
        if self.soft_start_s < 0:
            fail("soft_start_s", f"must be >= 0, got {self.soft_start_s}")
        if self.joint_pos_margin_rad < 0:
            fail("joint_pos_margin_rad", f"must be >= 0, got {self.joint_pos_margin_rad}")
        per_actuator = ["command_low", "command_high"]
        if self.is_joint_robot:
            per_actuator += ["joint_pos_low_rad", "joint_pos_high_rad", "default_pos_rad", "damping_kd_Nms_per_rad"]
            if self.torque_limit_Nm:
                per_actuator.append("torque_limit_Nm")
        else:
            for name in (
                "joint_pos_low_rad",
                "joint_pos_high_rad",
                "torque_limit_Nm",
                "default_pos_rad",
                "damping_kd_Nms_per_rad",
            ):
                if getattr(self, name):
                    fail(name, f"a {self.command_type} robot has no joints; leave it out")
        for name in per_actuator:
            got = len(getattr(self, name))
            if got != n:
                fail(name, f"has {got} values for {n} actuators")
        for lo_name, hi_name in (("command_low", "command_high"), ("joint_pos_low_rad", "joint_pos_high_rad")):
            for i, (lo, hi) in enumerate(zip(getattr(self, lo_name), getattr(self, hi_name), strict=True)):
                if lo > hi:
                    fail(lo_name, f"{self.actuators[i]}: low {lo} exceeds high {hi}")
        for i, (q, lo, hi) in enumerate(
            zip(self.default_pos_rad, self.joint_pos_low_rad, self.joint_pos_high_rad, strict=True)
        ):
            if not lo <= q <= hi:
                fail("default_pos_rad", f"{self.actuators[i]}: {q} rad is outside its limits [{lo}, {hi}]")
        for i, kd in enumerate(self.damping_kd_Nms_per_rad):
            if kd < 0:
                fail("damping_kd_Nms_per_rad", f"{self.actuators[i]}: must be >= 0, got {kd}")

    @property
    def is_joint_robot(self) -> bool:
        """Joint robots damp on a fault; thrust robots (quadrotor) disarm."""
        return self.command_type != "motor_thrust"

    @property
    def period_ns(self) -> int:
        return round(1e9 / self.control_hz)

    @classmethod
    def from_dict(cls, d: dict, source: str = "robot config") -> RobotConfig:
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a mapping of fields, got {type(d).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ConfigError(f"{source}: unknown field(s) {unknown} (fields: {', '.join(fields)})")
        required = [
            n
            for n, f in fields.items()
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        missing = [n for n in required if n not in d]
        if missing:
            raise ConfigError(f"{source}: missing field(s) {missing}")
        # YAML writes `50` for 50.0 and lists for tuples: convert to the annotated types before checking
        hints = typing.get_type_hints(cls)
        kwargs = {}
        for name, value in d.items():
            floats = hints[name] is float or hints[name] == tuple[float, ...]
            if isinstance(value, list):
                value = tuple(float(v) if floats and _is_int(v) else v for v in value)
            elif floats and _is_int(value):
                value = float(value)
            kwargs[name] = value
        try:
            return cls(**kwargs)
        except ConfigError as e:
            raise ConfigError(f"{source}: {e}") from None

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}


HARDWARE_FIELDS = (
    "robot",
    "sensors",
    "joint_pos_margin_rad",
    "damping_kd_Nms_per_rad",
    "soft_start_s",
    "watchdog_periods",
    "spec_version",
)
SENSORS_BY_KIND = {"multirotor": ("odometry", "imu"), "legged": ("joint_state", "imu"), "arm": ("joint_state",)}


def robot_config(
    robot: RobotCfg, spec: PolicySpec, hardware: dict | None = None, source: str = "hardware config"
) -> RobotConfig:
    """The runtime's RobotConfig from the robot config, the policy's command limits and the hardware
    fields (HARDWARE_FIELDS but `robot`; each has a default for the robot's kind)."""
    hardware = dict(hardware or {})
    unknown = sorted(set(hardware) - set(HARDWARE_FIELDS))
    if unknown:
        raise ConfigError(
            f"{source}: unknown field(s) {unknown}; a hardware config holds only {list(HARDWARE_FIELDS)} "
            f"(names, default pose and rate come from the robot config '{robot.name}')"
        )
    hardware.pop("robot", None)
    names = robot.actuator_names
    joint = robot.kind != "multirotor"
    limits = dict(zip(spec.action.names, zip(spec.action.low, spec.action.high, strict=True), strict=True))
    # a name the policy lacks: check_against_spec names it; a finite placeholder lets it get that far
    low = tuple(float(limits.get(n, (-1e9, 1e9))[0]) for n in names)
    high = tuple(float(limits.get(n, (-1e9, 1e9))[1]) for n in names)
    d = {
        "robot": robot.name,
        "control_hz": robot.control_hz,
        "actuators": names,
        "command_low": low,
        "command_high": high,
        "command_type": "joint_position" if joint else "motor_thrust",
        "sensors": SENSORS_BY_KIND[robot.kind],
        "soft_start_s": 2.0 if joint else 0.0,
    }
    if joint:
        if robot.joints is None:
            raise ConfigError(f"{source}: the {robot.kind} robot '{robot.name}' has no joints")
        d.update(
            joint_pos_low_rad=low,
            joint_pos_high_rad=high,
            torque_limit_Nm=robot.joints.per_joint("effort_limit_Nm"),
            default_pos_rad=robot.joints.default_pos_rad,
            damping_kd_Nms_per_rad=robot.joints.per_joint("kd"),
        )
        kd = hardware.get("damping_kd_Nms_per_rad")
        if isinstance(kd, list) and len(kd) == 1:
            hardware["damping_kd_Nms_per_rad"] = kd * len(names)
    return RobotConfig.from_dict({**d, **hardware}, source=source)


def read_hardware_yaml(path: str | Path) -> tuple[dict, RobotCfg]:
    """A hardware YAML's fields and the robot config its `robot:` names (a built-in name, or a robot
    config path relative to the YAML)."""
    import yaml

    path = Path(path)
    try:
        d = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: cannot read hardware config: {e}") from e
    if not isinstance(d, dict) or not isinstance(d.get("robot"), str):
        raise ConfigError(f"{path}: a hardware config needs `robot:` (a robot name, or a path to its robot config)")
    robot_ref = d["robot"]
    if (path.parent / robot_ref).is_file():
        robot_ref = str(path.parent / robot_ref)
    return d, find_robot(robot_ref)


def load_robot_config(path: str | Path, spec: PolicySpec) -> RobotConfig:
    """A hardware YAML (`robot:` a robot name or robot config path, plus hardware fields) for `spec`."""
    d, robot = read_hardware_yaml(path)
    d.pop("serial", None)  # the serial link's section is hardware/serial_config.py's, not the runtime's
    return robot_config(robot, spec, d, source=str(path))


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def check_against_spec(cfg: RobotConfig, spec: PolicySpec) -> None:
    """Raise SpecError listing every difference between the robot and the policy at the seam."""
    diffs: list[str] = []
    what = "joint" if cfg.is_joint_robot else "actuator"
    if spec.version != SPEC_VERSION:
        diffs.append(f"spec version: policy has {spec.version}, this runtime reads {SPEC_VERSION}")
    elif cfg.spec_version != spec.version:
        diffs.append(f"spec version: robot config is written for {cfg.spec_version}, policy has {spec.version}")
    if cfg.robot != spec.robot:
        diffs.append(f"robot: robot is {cfg.robot!r}, policy was trained for {spec.robot!r}")
    if not math.isclose(cfg.control_hz, spec.control_hz, rel_tol=1e-9):
        diffs.append(f"control rate: robot runs at {cfg.control_hz:g} Hz, policy expects {spec.control_hz:g} Hz")
    if cfg.command_type != spec.action.type:
        diffs.append(f"command type: robot takes {cfg.command_type!r}, policy outputs {spec.action.type!r}")
    robot_names, policy_names = list(cfg.actuators), list(spec.action.names)
    if len(robot_names) != len(policy_names):
        diffs.append(f"action size: robot has {len(robot_names)} {what}s, policy outputs {len(policy_names)}")
    missing = [n for n in policy_names if n not in robot_names]
    extra = [n for n in robot_names if n not in policy_names]
    if missing:
        diffs.append(f"{what}s missing on the robot: {missing}")
    if extra:
        diffs.append(f"{what}s the policy does not drive: {extra}")
    if not missing and not extra and robot_names != policy_names:
        i = next(k for k, (a, b) in enumerate(zip(robot_names, policy_names, strict=True)) if a != b)
        diffs.append(f"{what} order differs at index {i}: robot has {robot_names[i]}, policy expects {policy_names[i]}")
    if cfg.command_type == "joint_position" == spec.action.type and robot_names == policy_names:
        # the policy's zero action is its default pose: soft start must end exactly there
        for name, q, off in zip(robot_names, cfg.default_pos_rad, spec.action.offset, strict=True):
            if abs(q - off) > DEFAULT_POSE_TOL_RAD:
                diffs.append(f"default pose of {name}: robot has {q:g} rad, policy's action offset is {off:g} rad")
    if diffs:
        raise SpecError(f"robot config '{cfg.robot}' does not match the policy ({spec.task}): " + "; ".join(diffs))
