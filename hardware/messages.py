"""The motor-board message set (protocol version 1): a fixed header, then one body per message type.

Every payload (what a frame carries, see frames.py) is little-endian and starts with the 8-byte
header: version u8, type u8, seq u16, time_us u32. The byte layouts are in PROTOCOL.md; the structs
below are their only definition on this side. Float arrays start at 4-byte-aligned offsets so that
firmware may read them in place. Decoding never guesses: a payload of another version, an unknown
type or a length that does not match the type and actuator count raises a DecodeError that says so.
"""

from __future__ import annotations

import enum
import functools
import struct
from dataclasses import dataclass
from typing import ClassVar, Self, TypeVar

PROTOCOL_VERSION = 1
HEADER = struct.Struct("<BBHI")  # version, type, seq, time_us
SEQ_MODULUS = 1 << 16
TIME_MODULUS = 1 << 32
MAX_ACTUATORS = 32
MAX_ERROR_TEXT_BYTES = 64
IMU_PRESENT = 0x8000
"""Bit 15 of STATE's flags: the IMU block follows the actuator arrays. Set from State.imu, not by hand."""


class MsgType(enum.IntEnum):
    HEARTBEAT = 1
    STATE = 2
    COMMAND = 3
    ESTOP = 4
    CONFIG = 5
    ERROR = 6


class DeviceStatus(enum.IntEnum):
    """What the board is doing with its motors (in HEARTBEAT and STATE)."""

    IDLE = 0  # motors off: not configured yet, or no COMMAND since CONFIG
    ACTIVE = 1  # applying the latest COMMAND
    TIMED_OUT = 2  # no COMMAND within the timeout: outputs at zero until the next COMMAND
    ESTOPPED = 3  # motor power cut, latched until the board is reset


class StateFlags(enum.IntFlag):
    MOTOR_POWER = 0x0001  # the motor power stage is on
    FAULT = 0x0002  # a driver or motor fault is active; an ERROR message named it


class CommandMode(enum.IntEnum):
    POSITION = 0  # targets in rad, PD on the board with per-actuator kp, kd
    TORQUE = 1  # targets in N m
    THRUST = 2  # targets in N per rotor


class ConfigStatus(enum.IntEnum):
    REQUEST = 0  # host -> board
    ACCEPTED = 1  # board's echo: in force from now on
    REJECTED = 2  # board's echo: previous configuration stays; an ERROR says why


class ErrorCode(enum.IntEnum):
    """Codes the board reports in ERROR. Decoding keeps codes it does not know as plain ints."""

    UNSUPPORTED_VERSION = 1
    UNKNOWN_TYPE = 2
    BAD_LENGTH = 3
    CONFIG_REJECTED = 4
    NOT_CONFIGURED = 5
    ACTUATOR_COUNT_MISMATCH = 6
    COMMAND_TIMEOUT = 7
    ESTOPPED = 8
    MOTOR_FAULT = 9
    UNDER_VOLTAGE = 10
    OVER_TEMPERATURE = 11
    UNSUPPORTED_MODE = 12


_KNOWN_CODES = frozenset(ErrorCode)


class DecodeError(ValueError):
    """A payload that is not a valid message of this protocol version."""


class VersionError(DecodeError):
    pass


class UnknownTypeError(DecodeError):
    pass


class LengthError(DecodeError):
    pass


def _check_uint(owner: str, name: str, value: int, bits: int) -> None:
    if not 0 <= value < (1 << bits):
        raise ValueError(f"{owner}.{name} = {value} does not fit in u{bits} (0..{(1 << bits) - 1})")


def _check_count(owner: str, n: int) -> None:
    if not 1 <= n <= MAX_ACTUATORS:
        raise ValueError(f"{owner}: {n} actuators; the protocol carries 1..{MAX_ACTUATORS}")


def _check_len(owner: str, name: str, values, n: int) -> None:
    if len(values) != n:
        raise ValueError(f"{owner}.{name} has {len(values)} values, expected {n}")


def _decoded_count(owner: str, n: int) -> int:
    if not 1 <= n <= MAX_ACTUATORS:
        raise DecodeError(f"{owner} for {n} actuators; the protocol carries 1..{MAX_ACTUATORS}")
    return n


_IntEnumT = TypeVar("_IntEnumT", bound=enum.IntEnum)


def _enum(cls: type[_IntEnumT], value: int, owner: str, name: str) -> _IntEnumT:
    try:
        return cls(value)
    except ValueError:
        raise DecodeError(f"{owner}.{name} = {value} is not one of {[m.value for m in cls]} ({cls.__name__})") from None


@dataclass(frozen=True, kw_only=True)
class Message:
    """Header fields common to all messages. seq counts this sender's messages (all types, wrapping
    at 2^16); time_us is the sender's monotonic clock in microseconds, wrapping at 2^32."""

    TYPE: ClassVar[MsgType]
    seq: int = 0
    time_us: int = 0

    def encode(self) -> bytes:
        """The payload for frames.encode_frame; raises ValueError naming a field that does not fit."""
        _check_uint(self.TYPE.name, "seq", self.seq, 16)
        _check_uint(self.TYPE.name, "time_us", self.time_us, 32)
        return self._pack((PROTOCOL_VERSION, self.TYPE, self.seq, self.time_us))

    def _pack(self, header: tuple) -> bytes:
        raise NotImplementedError

    @classmethod
    def _unpack(cls, payload: bytes, seq: int, time_us: int) -> Message:
        raise NotImplementedError

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        """This message type from `payload`; DecodeError if it is another type or malformed."""
        msg = decode_message(payload)
        if not isinstance(msg, cls):
            raise DecodeError(f"expected a {cls.TYPE.name} message, got {msg.TYPE.name}")
        return msg


def _length_error(mtype: MsgType, got: int, expected: int, what: str = "") -> LengthError:
    return LengthError(f"{mtype.name} of {got} bytes, expected {expected}{what}")


@dataclass(frozen=True, kw_only=True)
class Heartbeat(Message):
    """Liveness, both ways, when nothing else is sent. Never refreshes the command timeout."""

    TYPE: ClassVar[MsgType] = MsgType.HEARTBEAT
    status: DeviceStatus = DeviceStatus.IDLE
    """Board: its DeviceStatus. Host: ACTIVE while its control loop runs, else IDLE."""

    _S: ClassVar[struct.Struct] = struct.Struct("<BBHIB")

    def _pack(self, header: tuple) -> bytes:
        return self._S.pack(*header, self.status)

    @classmethod
    def _unpack(cls, payload: bytes, seq: int, time_us: int) -> Heartbeat:
        if len(payload) != cls._S.size:
            raise _length_error(cls.TYPE, len(payload), cls._S.size)
        status = _enum(DeviceStatus, payload[8], "HEARTBEAT", "status")
        return cls(seq=seq, time_us=time_us, status=status)


@dataclass(frozen=True, kw_only=True)
class Imu:
    quat_wxyz: tuple[float, float, float, float]
    gyro_rad_s: tuple[float, float, float]
    accel_m_s2: tuple[float, float, float]
    """Specific force in the IMU frame, as an accelerometer reads it (+9.81 up when at rest)."""


IMU_FLOATS = 10


@functools.cache
def _state_struct(n: int, imu: bool) -> struct.Struct:
    return struct.Struct(f"<BBHIBBHHH{3 * n + (IMU_FLOATS if imu else 0)}f")


@dataclass(frozen=True, kw_only=True)
class State(Message):
    """Board -> host at the configured control rate: what every actuator and the IMU measure.
    A value the board cannot measure (a rotor's angle) is sent as NaN."""

    TYPE: ClassVar[MsgType] = MsgType.STATE
    status: DeviceStatus
    flags: StateFlags = StateFlags(0)
    command_seq: int = 0
    """seq of the COMMAND being applied (the host's round trip and which command took effect)."""
    bus_voltage_mv: int = 0
    position_rad: tuple[float, ...]
    velocity_rad_s: tuple[float, ...]
    effort_Nm: tuple[float, ...]
    imu: Imu | None = None

    def _pack(self, header: tuple) -> bytes:
        n = len(self.position_rad)
        _check_count("STATE", n)
        _check_len("STATE", "velocity_rad_s", self.velocity_rad_s, n)
        _check_len("STATE", "effort_Nm", self.effort_Nm, n)
        _check_uint("STATE", "command_seq", self.command_seq, 16)
        _check_uint("STATE", "bus_voltage_mv", self.bus_voltage_mv, 16)
        if self.flags & IMU_PRESENT:
            raise ValueError("STATE.flags has bit 15 (IMU_PRESENT) set by hand; it is set from STATE.imu")
        flags = int(self.flags)
        floats = [*self.position_rad, *self.velocity_rad_s, *self.effort_Nm]
        if self.imu is not None:
            flags |= IMU_PRESENT
            _check_len("STATE", "imu.quat_wxyz", self.imu.quat_wxyz, 4)
            _check_len("STATE", "imu.gyro_rad_s", self.imu.gyro_rad_s, 3)
            _check_len("STATE", "imu.accel_m_s2", self.imu.accel_m_s2, 3)
            floats += [*self.imu.quat_wxyz, *self.imu.gyro_rad_s, *self.imu.accel_m_s2]
        s = _state_struct(n, self.imu is not None)
        return s.pack(*header, n, self.status, flags, self.command_seq, self.bus_voltage_mv, *floats)

    @classmethod
    def _unpack(cls, payload: bytes, seq: int, time_us: int) -> State:
        if len(payload) < 16:
            raise _length_error(cls.TYPE, len(payload), 16, " at least (header and fixed fields)")
        n, flags = _decoded_count("STATE", payload[8]), int.from_bytes(payload[10:12], "little")
        has_imu = bool(flags & IMU_PRESENT)
        s = _state_struct(n, has_imu)
        if len(payload) != s.size:
            raise _length_error(
                cls.TYPE, len(payload), s.size, f" for {n} actuators {'with' if has_imu else 'without'} IMU"
            )
        v = s.unpack(payload)
        f = v[9:]
        i = 3 * n
        imu = Imu(quat_wxyz=f[i : i + 4], gyro_rad_s=f[i + 4 : i + 7], accel_m_s2=f[i + 7 :]) if has_imu else None
        return cls(
            seq=seq, time_us=time_us, status=_enum(DeviceStatus, v[5], "STATE", "status"),
            flags=StateFlags(flags & ~IMU_PRESENT), command_seq=v[7], bus_voltage_mv=v[8],
            position_rad=f[:n], velocity_rad_s=f[n : 2 * n], effort_Nm=f[2 * n : 3 * n], imu=imu,
        )  # fmt: skip


@functools.cache
def _command_struct(n: int, mode: CommandMode) -> struct.Struct:
    return struct.Struct(f"<BBHIBBH{(3 if mode == CommandMode.POSITION else 1) * n}f")


@dataclass(frozen=True, kw_only=True)
class Command(Message):
    """Host -> board: targets for every actuator, applied until the next COMMAND or the timeout.
    targets are rad (POSITION: torque = kp (target - q) - kd q'), N m (TORQUE) or N (THRUST)."""

    TYPE: ClassVar[MsgType] = MsgType.COMMAND
    mode: CommandMode
    targets: tuple[float, ...]
    kp_Nm_per_rad: tuple[float, ...] | None = None
    kd_Nms_per_rad: tuple[float, ...] | None = None
    state_seq: int = 0
    """seq of the newest STATE the host had when it computed this (the board can measure the loop's latency)."""

    def _pack(self, header: tuple) -> bytes:
        n = len(self.targets)
        _check_count("COMMAND", n)
        _check_uint("COMMAND", "state_seq", self.state_seq, 16)
        floats = list(self.targets)
        if self.mode == CommandMode.POSITION:
            if self.kp_Nm_per_rad is None or self.kd_Nms_per_rad is None:
                raise ValueError("COMMAND in POSITION mode needs kp_Nm_per_rad and kd_Nms_per_rad")
            _check_len("COMMAND", "kp_Nm_per_rad", self.kp_Nm_per_rad, n)
            _check_len("COMMAND", "kd_Nms_per_rad", self.kd_Nms_per_rad, n)
            floats += [*self.kp_Nm_per_rad, *self.kd_Nms_per_rad]
        elif self.kp_Nm_per_rad is not None or self.kd_Nms_per_rad is not None:
            raise ValueError(f"COMMAND in {self.mode.name} mode carries no gains; kp/kd are for POSITION only")
        return _command_struct(n, self.mode).pack(*header, n, self.mode, self.state_seq, *floats)

    @classmethod
    def _unpack(cls, payload: bytes, seq: int, time_us: int) -> Command:
        if len(payload) < 12:
            raise _length_error(cls.TYPE, len(payload), 12, " at least (header and fixed fields)")
        n = _decoded_count("COMMAND", payload[8])
        mode = _enum(CommandMode, payload[9], "COMMAND", "mode")
        s = _command_struct(n, mode)
        if len(payload) != s.size:
            raise _length_error(cls.TYPE, len(payload), s.size, f" for {n} actuators in {mode.name} mode")
        v = s.unpack(payload)
        f = v[7:]
        gains = (f[n : 2 * n], f[2 * n :]) if mode == CommandMode.POSITION else (None, None)
        return cls(
            seq=seq,
            time_us=time_us,
            mode=mode,
            targets=f[:n],
            kp_Nm_per_rad=gains[0],
            kd_Nms_per_rad=gains[1],
            state_seq=v[6],
        )


@dataclass(frozen=True, kw_only=True)
class Estop(Message):
    """Host -> board: cut motor power now; latched until the board is reset. No body."""

    TYPE: ClassVar[MsgType] = MsgType.ESTOP

    def _pack(self, header: tuple) -> bytes:
        return HEADER.pack(*header)

    @classmethod
    def _unpack(cls, payload: bytes, seq: int, time_us: int) -> Estop:
        if len(payload) != HEADER.size:
            raise _length_error(cls.TYPE, len(payload), HEADER.size)
        return cls(seq=seq, time_us=time_us)


@dataclass(frozen=True, kw_only=True)
class Config(Message):
    """Host -> board before the first COMMAND; the board echoes it with ACCEPTED or REJECTED."""

    TYPE: ClassVar[MsgType] = MsgType.CONFIG
    actuator_count: int
    command_timeout_ms: int
    control_rate_hz: int
    status: ConfigStatus = ConfigStatus.REQUEST

    _S: ClassVar[struct.Struct] = struct.Struct("<BBHIBBHH")

    def _pack(self, header: tuple) -> bytes:
        _check_count("CONFIG", self.actuator_count)
        _check_uint("CONFIG", "command_timeout_ms", self.command_timeout_ms, 16)
        _check_uint("CONFIG", "control_rate_hz", self.control_rate_hz, 16)
        return self._S.pack(*header, self.actuator_count, self.status, self.command_timeout_ms, self.control_rate_hz)

    @classmethod
    def _unpack(cls, payload: bytes, seq: int, time_us: int) -> Config:
        if len(payload) != cls._S.size:
            raise _length_error(cls.TYPE, len(payload), cls._S.size)
        v = cls._S.unpack(payload)
        _decoded_count("CONFIG", v[4])
        status = _enum(ConfigStatus, v[5], "CONFIG", "status")
        return cls(
            seq=seq, time_us=time_us, actuator_count=v[4], status=status, command_timeout_ms=v[6], control_rate_hz=v[7]
        )


@dataclass(frozen=True, kw_only=True)
class ErrorReport(Message):
    """ERROR, board -> host: something went wrong on the board; `text` is short ASCII for the log."""

    TYPE: ClassVar[MsgType] = MsgType.ERROR
    code: int
    """An ErrorCode, or a newer firmware's code this side does not know."""
    text: str = ""

    def _pack(self, header: tuple) -> bytes:
        _check_uint("ERROR", "code", self.code, 16)
        if not self.text.isascii():
            raise ValueError(f"ERROR.text must be ASCII: {self.text!r}")
        if len(self.text) > MAX_ERROR_TEXT_BYTES:
            raise ValueError(f"ERROR.text has {len(self.text)} characters, at most {MAX_ERROR_TEXT_BYTES}")
        return HEADER.pack(*header) + self.code.to_bytes(2, "little") + self.text.encode("ascii")

    @classmethod
    def _unpack(cls, payload: bytes, seq: int, time_us: int) -> ErrorReport:
        if not HEADER.size + 2 <= len(payload) <= HEADER.size + 2 + MAX_ERROR_TEXT_BYTES:
            raise _length_error(
                cls.TYPE, len(payload), HEADER.size + 2, f" to {HEADER.size + 2 + MAX_ERROR_TEXT_BYTES}"
            )
        code = int.from_bytes(payload[8:10], "little")
        try:
            text = payload[10:].decode("ascii")
        except UnicodeDecodeError:
            raise DecodeError(f"ERROR text is not ASCII: {payload[10:]!r}") from None
        return cls(seq=seq, time_us=time_us, code=ErrorCode(code) if code in _KNOWN_CODES else code, text=text)


_BY_TYPE: dict[int, type[Message]] = {c.TYPE: c for c in (Heartbeat, State, Command, Estop, Config, ErrorReport)}


def decode_message(payload: bytes) -> Message:
    """The message in a frame's payload; DecodeError (VersionError, UnknownTypeError, LengthError) if malformed."""
    if payload and payload[0] != PROTOCOL_VERSION:  # checked first: byte 0 is the version in every version
        raise VersionError(f"message of protocol version {payload[0]}; this side speaks version {PROTOCOL_VERSION}")
    if len(payload) < HEADER.size:
        raise LengthError(f"payload of {len(payload)} bytes is shorter than the {HEADER.size}-byte header")
    _, mtype, seq, time_us = HEADER.unpack_from(payload)
    cls = _BY_TYPE.get(mtype)
    if cls is None:
        known = ", ".join(f"{t.value} {t.name}" for t in MsgType)
        raise UnknownTypeError(f"unknown message type {mtype} (version {PROTOCOL_VERSION} knows {known})")
    return cls._unpack(payload, seq, time_us)


@dataclass
class SequenceTracker:
    """Counts one sender's lost and out-of-order messages from their sequence numbers.

    A jump forward by k counts k - 1 lost; a seq at or behind the last one (within half the 2^16
    range) is out of order (late or repeated) and does not move the tracker. A late message was
    already counted lost when the jump past it arrived.
    """

    received: int = 0
    lost: int = 0
    out_of_order: int = 0
    last_seq: int | None = None

    def update(self, seq: int) -> bool:
        """Record `seq`; False if the message is older than one already seen (do not apply it)."""
        self.received += 1
        if self.last_seq is not None:
            gap = (seq - self.last_seq) % SEQ_MODULUS
            if gap == 0 or gap >= SEQ_MODULUS // 2:
                self.out_of_order += 1
                return False
            self.lost += gap - 1
        self.last_seq = seq
        return True
