"""The serial side of a robot's hardware YAML (ros_ws/src/s2r_ros/config/<robot>.yaml): its `serial:` section.

Which electronics the robot's joints or rotors sit behind, and what the host must know to talk to them:

    serial:                          # Dynamixel servos, one per joint (hardware/dynamixel_bus.py)
      bus: dynamixel
      baud: 1000000
      joints:                        # every joint of the robot config, by name
        joint1: {id: 11, offset_rad: 0.0, direction: 1}

    serial:                          # a motor board speaking hardware/PROTOCOL.md
      bus: motor_board
      baud: 1000000
      command_timeout_ms: 100        # sent in CONFIG: the board's outputs go off this long after the last COMMAND
      control_rate_hz: 200           # sent in CONFIG: the board's STATE rate

The joints are the robot config's (config/robot.py), so a name it lacks, or one of its joints left out,
is an error naming it; the result lists them in the robot's wire order. Every problem is reported at
once, each naming its field. The deploy runtime (deploy/robot_config.py) skips this section.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from config.robot import RobotCfg
from config.validate import ConfigError
from deploy.robot_config import read_hardware_yaml
from hardware import dynamixel_table as dt

BUSES = ("dynamixel", "motor_board")
MAX_SERVO_ID = 252  # Protocol 2.0: 253..255 are reserved or broadcast
U16_MAX = 65535  # CONFIG carries the timeout and the rate as u16
BITS_PER_BYTE = 10  # 8N1
STATE_IMU_BYTES = 40  # PROTOCOL.md: the IMU block of STATE


@dataclass(frozen=True)
class ServoJointCfg:
    """One joint's servo: joint angle = direction * (servo angle - offset_rad), servo angle 0 at tick 2048."""

    id: int
    offset_rad: float = 0.0
    direction: int = 1


@dataclass(frozen=True)
class DynamixelSerialCfg:
    baud: int
    joints: dict[str, ServoJointCfg]  # every joint of the robot, in its wire order

    def servos(self):
        """The joints as hardware.dynamixel_bus takes them (gains left at the servos' defaults)."""
        from hardware.dynamixel_bus import ServoCfg

        return {name: ServoCfg(j.id, offset_rad=j.offset_rad, direction=j.direction) for name, j in self.joints.items()}


@dataclass(frozen=True)
class MotorBoardSerialCfg:
    baud: int
    command_timeout_ms: int  # the host's CONFIG: outputs off when no COMMAND came this long
    control_rate_hz: int  # the host's CONFIG: STATE messages per second


SerialCfg = DynamixelSerialCfg | MotorBoardSerialCfg


@dataclass(frozen=True)
class HardwareSerial:
    """A hardware YAML's robot and its serial section (None: the YAML has none)."""

    robot: RobotCfg
    serial: SerialCfg | None
    source: str


def _whole(value, where: str, lo: int, hi: int, problems: list[str]) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(f"{where}: expected a whole number, got {value!r}")
        return lo
    if not lo <= value <= hi:
        problems.append(f"{where}: must be in {lo}..{hi}, got {value}")
    return value


def _servo_joint(d, where: str, problems: list[str]) -> ServoJointCfg:
    if not isinstance(d, dict):
        problems.append(f"{where}: expected {{id, offset_rad, direction}}, got {d!r}")
        return ServoJointCfg(0)
    for name in d:
        if name not in ("id", "offset_rad", "direction"):
            problems.append(f"{where}.{name}: unknown field (fields: id, offset_rad, direction)")
    if "id" not in d:
        problems.append(f"{where}.id: missing")
    servo_id = _whole(d.get("id", 0), f"{where}.id", 0, MAX_SERVO_ID, problems)
    offset = d.get("offset_rad", 0.0)
    if isinstance(offset, bool) or not isinstance(offset, (int, float)) or not math.isfinite(offset):
        problems.append(f"{where}.offset_rad: expected a finite number of radians, got {offset!r}")
        offset = 0.0
    direction = d.get("direction", 1)
    if isinstance(direction, bool) or direction not in (1, -1):
        problems.append(f"{where}.direction: must be +1 or -1, got {direction!r}")
        direction = 1
    return ServoJointCfg(servo_id, float(offset), int(direction))


def _dynamixel(d: dict, robot: RobotCfg, problems: list[str]) -> DynamixelSerialCfg:
    baud = d.get("baud", 0)
    if "baud" in d and (isinstance(baud, bool) or baud not in dt.CODE_BY_BAUD_RATE):
        problems.append(f"serial.baud: {baud!r} is not a Dynamixel X-series baud rate {sorted(dt.CODE_BY_BAUD_RATE)}")
    if robot.joints is None:
        problems.append(f"serial.bus: dynamixel servos drive joints, and {robot.kind} robot '{robot.name}' has none")
        return DynamixelSerialCfg(baud, {})
    names = robot.joints.names
    given = d.get("joints", {})  # missing: reported with the section's fields
    if not isinstance(given, dict):
        problems.append(
            f"serial.joints: expected a mapping of joint name to {{id, offset_rad, direction}}, got {given!r}"
        )
        given = {}
    for name in given:
        if name not in names:
            problems.append(
                f"serial.joints.{name}: robot '{robot.name}' has no joint {name!r} (its joints: {', '.join(names)})"
            )
    for name in names:
        if "joints" in d and name not in given:
            problems.append(f"serial.joints.{name}: missing (every joint of robot '{robot.name}' needs its servo)")
    joints = {name: _servo_joint(given[name], f"serial.joints.{name}", problems) for name in names if name in given}
    by_id: dict[int, list[str]] = {}
    for name, j in joints.items():
        by_id.setdefault(j.id, []).append(name)
    for servo_id, owners in by_id.items():
        if len(owners) > 1:
            problems.append(f"serial.joints: ID {servo_id} is given to {', '.join(owners)}; each servo needs its own")
    return DynamixelSerialCfg(baud, joints)


def state_wire_bytes(num_actuators: int, imu: bool) -> int:
    """One STATE frame on the wire (PROTOCOL.md): payload, CRC-32, COBS overhead, the 0x00 delimiter."""
    encoded = 16 + 12 * num_actuators + (STATE_IMU_BYTES if imu else 0) + 4
    return encoded + math.ceil(encoded / 254) + 1


def _motor_board(d: dict, robot: RobotCfg, problems: list[str]) -> MotorBoardSerialCfg:
    cfg = MotorBoardSerialCfg(
        baud=_whole(d.get("baud", 1), "serial.baud", 1, 100_000_000, problems),
        command_timeout_ms=_whole(d.get("command_timeout_ms", 1), "serial.command_timeout_ms", 1, U16_MAX, problems),
        control_rate_hz=_whole(d.get("control_rate_hz", 1), "serial.control_rate_hz", 1, U16_MAX, problems),
    )
    n = len(robot.actuator_names)
    need = state_wire_bytes(max(n, 1), imu=bool(robot.base_body)) * BITS_PER_BYTE * cfg.control_rate_hz
    if not problems and need > cfg.baud:
        problems.append(
            f"serial.baud: {cfg.baud} baud cannot carry STATE for {n} actuators at {cfg.control_rate_hz} Hz "
            f"({need} bit/s); raise the baud rate or lower control_rate_hz"
        )
    return cfg


BUS_FIELDS = {"dynamixel": ("baud", "joints"), "motor_board": ("baud", "command_timeout_ms", "control_rate_hz")}


def serial_cfg_from_dict(d, robot: RobotCfg, source: str) -> SerialCfg:
    """The `serial:` section `d` for `robot`; ConfigError listing every problem, each naming its field."""
    problems: list[str] = []
    cfg = None
    if not isinstance(d, dict):
        problems.append(f"serial: expected a mapping of fields, got {d!r}")
    elif d.get("bus") not in BUSES:
        problems.append(
            f"serial.bus: {d['bus']!r} is not one of {BUSES}" if "bus" in d else f"serial.bus: missing (one of {BUSES})"
        )
    else:
        fields = ("bus", *BUS_FIELDS[d["bus"]])
        for name in d:
            if name not in fields:
                problems.append(f"serial.{name}: unknown field for bus {d['bus']} (fields: {', '.join(fields)})")
        problems += [f"serial.{name}: missing" for name in fields if name not in d]
        cfg = (_dynamixel if d["bus"] == "dynamixel" else _motor_board)(d, robot, problems)
    if problems:
        lines = "\n".join(f"  - {p}" for p in problems)
        raise ConfigError(f"{source}: serial section: {len(problems)} problem(s):\n{lines}")
    assert cfg is not None
    return cfg


def load_hardware_serial(path: str | Path) -> HardwareSerial:
    """The robot (`robot:`, a built-in name or a path relative to the YAML) and `serial:` of a hardware YAML."""
    d, robot = read_hardware_yaml(path)
    serial = serial_cfg_from_dict(d["serial"], robot, str(path)) if d.get("serial") is not None else None
    return HardwareSerial(robot, serial, str(path))
