"""DynamixelBus: a robot's joints on a Dynamixel Protocol 2.0 bus, through ROBOTIS' dynamixel-sdk.

Joints are named in the robot's wire order and mapped to servos (`ServoCfg`: ID, offset, direction),
so everything above this file speaks joint radians. `open()` refuses a bus that is not fit to run and
says why: an unreachable servo triggers the link diagnosis (`dynamixel_scan`), whose findings (wrong
baud rate, missing ID) become the error message; a wrong operating mode or a latched hardware error is
named per servo. At run time one sync read fetches current, velocity and position of every servo
(registers 126..135) and one sync write sends the goals; failures raise `BusError` naming the servo,
and `stats` counts them with the round-trip times.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import NoReturn

import numpy as np
import serial
from dynamixel_sdk import COMM_RX_CORRUPT, COMM_RX_TIMEOUT, COMM_SUCCESS, GroupSyncRead, GroupSyncWrite, PacketHandler

from hardware import dynamixel_table as dt
from hardware.dynamixel_scan import FTDI_LATENCY_S, SCAN_IDS, Port, describe_hardware_error, format_scan, scan_link

MAX_RETURN_DELAY_S = 508e-6  # the longest return delay a servo can be set to
SETUP_TRIES = 3  # set-up transactions are retried: a noisy byte must not stop the robot from starting


class DynamixelError(RuntimeError):
    """Anything that went wrong on the Dynamixel bus."""


class LinkError(DynamixelError):
    """The servos cannot be reached as configured (port, baud rate, IDs)."""


class ServoError(DynamixelError):
    """A servo answers but is not fit to run (wrong operating mode, latched hardware error)."""


class BusError(DynamixelError):
    """A transaction failed at run time (no answer, corrupted answer, port failure)."""


@dataclass(frozen=True)
class ServoCfg:
    id: int
    offset_rad: float = 0.0  # servo angle (0 at tick 2048) at which the joint is at 0
    direction: int = +1  # -1: the joint turns the other way than the servo
    position_p_gain: int = dt.DEFAULT_POSITION_P_GAIN  # written at open (register units)
    position_d_gain: int = 0

    def __post_init__(self):
        if not 0 <= self.id <= 252:
            raise ValueError(f"ServoCfg.id: need 0..252, got {self.id}")
        if self.direction not in (1, -1):
            raise ValueError(f"ServoCfg.direction: need +1 or -1, got {self.direction}")
        for name in ("position_p_gain", "position_d_gain"):
            if not 0 <= getattr(self, name) <= 16383:
                raise ValueError(f"ServoCfg.{name}: need 0..16383, got {getattr(self, name)}")


@dataclass
class BusStats:
    transactions: int = 0  # state reads attempted
    ok: int = 0  # state reads that succeeded
    timeouts: int = 0  # no (complete) status packet in time
    corrupt: int = 0  # status packet failed its CRC or framing
    failures: int = 0  # any other failure: port busy or failing, an error in the status packet
    writes: int = 0  # goal sync writes sent
    last_rtt_s: float = 0.0  # of the last successful state read: instruction out to last answer in
    max_rtt_s: float = 0.0
    total_rtt_s: float = 0.0  # over successful state reads

    @property
    def mean_rtt_s(self) -> float:
        return self.total_rtt_s / self.ok if self.ok else 0.0


@dataclass(frozen=True)
class JointState:
    position_rad: np.ndarray  # joint order
    velocity_radps: np.ndarray
    current_A: np.ndarray
    alert_joints: tuple[str, ...] = ()  # joints whose servo has a hardware error latched


class DynamixelBus:
    def __init__(
        self,
        port: str,
        baud: int,
        servos: dict[str, ServoCfg],
        usb_latency_s: float = FTDI_LATENCY_S,
        scan_ids: tuple[int, ...] = SCAN_IDS,
    ):
        if not servos:
            raise ValueError("DynamixelBus: no servos")
        ids = [s.id for s in servos.values()]
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ValueError(f"DynamixelBus: servo IDs {duplicates} are given to more than one joint")
        if baud not in dt.CODE_BY_BAUD_RATE:
            raise ValueError(f"DynamixelBus: {baud} baud is not an X-series rate {sorted(dt.CODE_BY_BAUD_RATE)}")
        self.port_name = port
        self.baud = baud
        self.servos = dict(servos)  # wire order
        self.joints = tuple(servos)
        self.usb_latency_s = usb_latency_s
        self.scan_ids = scan_ids
        self.stats = BusStats()
        self._ph = PacketHandler(2.0)
        self._port: Port | None = None
        # what is left of a sync read's answers after a failure, at most: wait it out before the next
        status_s = (11 + dt.PRESENT_STATE_SIZE) * 10.0 / baud + MAX_RETURN_DELAY_S
        self._settle_s = len(servos) * status_s + 0.002

    # --- set-up --------------------------------------------------------------------------------
    def open(self) -> None:
        """Open the port, check every servo, write gains, hold the present pose and turn the torque on."""
        if self._port is not None:
            raise DynamixelError(f"bus on {self.port_name} is already open")
        port = Port(self.port_name, self.usb_latency_s)
        try:
            if not port.setBaudRate(self.baud):
                raise LinkError(f"{self.baud} baud: dynamixel-sdk cannot set this rate")
        except (serial.SerialException, OSError) as e:
            raise LinkError(f"cannot open {self.port_name}: {e}") from e
        self._port = port
        try:
            self._check_servos()
            self._sync_read = GroupSyncRead(port, self._ph, dt.PRESENT_STATE_ADDRESS, dt.PRESENT_STATE_SIZE)
            self._goal_write = GroupSyncWrite(port, self._ph, dt.GOAL_POSITION.address, dt.GOAL_POSITION.size)
            self._torque_off_write = GroupSyncWrite(port, self._ph, dt.TORQUE_ENABLE.address, dt.TORQUE_ENABLE.size)
            self._torque_on_write = GroupSyncWrite(port, self._ph, dt.TORQUE_ENABLE.address, dt.TORQUE_ENABLE.size)
            for s in self.servos.values():
                self._sync_read.addParam(s.id)
                self._goal_write.addParam(s.id, [0] * dt.GOAL_POSITION.size)
                self._torque_off_write.addParam(s.id, [0])
                self._torque_on_write.addParam(s.id, [1])
            for joint, s in self.servos.items():
                self._write(joint, dt.POSITION_P_GAIN, s.position_p_gain)
                self._write(joint, dt.POSITION_D_GAIN, s.position_d_gain)
                # the servo drives to its goal register the moment torque comes on: make that where it is
                present = self._read(joint, dt.PRESENT_POSITION)
                self._write(joint, dt.GOAL_POSITION, min(max(present, 0), dt.MAX_POSITION_TICKS))
                self._write(joint, dt.TORQUE_ENABLE, 1)
        except DynamixelError:
            self.close()
            raise

    def _check_servos(self) -> None:
        missing = []
        alerts = []
        for joint, s in self.servos.items():
            for _ in range(SETUP_TRIES):
                _, result, error = self._ph.ping(self._port, s.id)
                if result == COMM_SUCCESS:
                    break
            if result != COMM_SUCCESS:
                missing.append(joint)
            elif error & dt.ERROR_ALERT_BIT:
                alerts.append(joint)
        if missing:
            self.close()
            scan = scan_link(
                self.port_name,
                ids=self.scan_ids,
                expected_ids=tuple(s.id for s in self.servos.values()),
                expected_baud=self.baud,
                usb_latency_s=self.usb_latency_s,
            )
            who = ", ".join(self._who(j) for j in missing)
            raise LinkError(
                f"no answer from {who} on {self.port_name} at {self.baud} baud; diagnosis: {format_scan(scan)}"
            )
        problems = []
        for joint in alerts:
            code = self._read(joint, dt.HARDWARE_ERROR_STATUS)
            problems.append(
                f"{self._who(joint)} reports {describe_hardware_error(code)}: remove the cause, then reboot it"
            )
        for joint in self.joints:
            mode = self._read(joint, dt.OPERATING_MODE)
            if mode != dt.OPERATING_MODE_POSITION:
                problems.append(
                    f"{self._who(joint)} is in {dt.operating_mode_name(mode)} mode (operating mode {mode}), "
                    f"not position control ({dt.OPERATING_MODE_POSITION}): set its {dt.OPERATING_MODE.name} "
                    f"({dt.OPERATING_MODE.address}) with the torque off"
                )
        if problems:
            raise ServoError("; ".join(problems))

    # one register of one servo, with status packet: set-up and diagnosis, where retries cost nothing
    def _read(self, joint: str, f: dt.Field) -> int:
        read = {1: self._ph.read1ByteTxRx, 2: self._ph.read2ByteTxRx, 4: self._ph.read4ByteTxRx}[f.size]
        for _ in range(SETUP_TRIES):
            value, result, error = read(self._port, self.servos[joint].id, f.address)
            if result == COMM_SUCCESS:
                break
        self._check(joint, f"reading {f.name} ({f.address})", result, error)
        return dt.decode(f, value.to_bytes(f.size, "little"))

    def _write(self, joint: str, f: dt.Field, value: int) -> None:
        write = {1: self._ph.write1ByteTxRx, 2: self._ph.write2ByteTxRx, 4: self._ph.write4ByteTxRx}[f.size]
        for _ in range(SETUP_TRIES):
            raw = int.from_bytes(dt.encode(f, value), "little")
            result, error = write(self._port, self.servos[joint].id, f.address, raw)
            if result == COMM_SUCCESS:
                break
        self._check(joint, f"writing {value} to {f.name} ({f.address})", result, error)

    def _check(self, joint: str, what: str, result: int, error: int) -> None:
        if result != COMM_SUCCESS:
            raise LinkError(f"{self._who(joint)}: {what} failed: {self._ph.getTxRxResult(result)}")
        if error & ~dt.ERROR_ALERT_BIT:
            raise ServoError(
                f"{self._who(joint)}: {what} refused: {self._ph.getRxPacketError(error & ~dt.ERROR_ALERT_BIT)}"
            )

    def _who(self, joint: str) -> str:
        return f"ID {self.servos[joint].id} (joint {joint!r})"

    def _require_open(self) -> Port:
        if self._port is None:
            raise DynamixelError(f"bus on {self.port_name} is not open: call open() first")
        return self._port

    # --- run time ------------------------------------------------------------------------------
    def read_state(self) -> JointState:
        """One sync read of present current, velocity and position of every servo, in joint order."""
        port = self._require_open()
        self.stats.transactions += 1
        start_s = time.perf_counter()
        result = self._sync_read.txPacket()
        if result != COMM_SUCCESS:
            self._fail("state read: the sync read instruction could not be sent", result)
        pos, vel, cur = (np.empty(len(self.joints)) for _ in range(3))
        alerts = []
        for k, (joint, s) in enumerate(self.servos.items()):
            data, result, error = self._ph.readRx(port, s.id, dt.PRESENT_STATE_SIZE)
            if result == COMM_SUCCESS and len(data) != dt.PRESENT_STATE_SIZE:
                result = COMM_RX_CORRUPT
            if result != COMM_SUCCESS or error & ~dt.ERROR_ALERT_BIT:
                self._fail(f"state read: {self._who(joint)}", result, error & ~dt.ERROR_ALERT_BIT)
            if error & dt.ERROR_ALERT_BIT:
                alerts.append(joint)
            pos[k] = s.direction * (dt.ticks_to_rad(_present(data, dt.PRESENT_POSITION)) - s.offset_rad)
            vel[k] = s.direction * dt.velocity_units_to_radps(_present(data, dt.PRESENT_VELOCITY))
            cur[k] = s.direction * dt.current_units_to_A(_present(data, dt.PRESENT_CURRENT))
        rtt_s = time.perf_counter() - start_s
        self.stats.ok += 1
        self.stats.last_rtt_s = rtt_s
        self.stats.max_rtt_s = max(self.stats.max_rtt_s, rtt_s)
        self.stats.total_rtt_s += rtt_s
        return JointState(pos, vel, cur, tuple(alerts))

    def _fail(self, what: str, result: int, error: int = 0) -> NoReturn:
        """Count a failed exchange, let it end (see _settle) and raise saying what failed."""
        if result == COMM_RX_TIMEOUT:
            self.stats.timeouts += 1
        elif result == COMM_RX_CORRUPT:
            self.stats.corrupt += 1
        else:
            self.stats.failures += 1
        self._settle()
        reason = self._ph.getTxRxResult(result) if result != COMM_SUCCESS else self._ph.getRxPacketError(error)
        raise BusError(f"{what}: {reason}")

    def _settle(self) -> None:
        """Let the rest of a failed exchange's answers arrive, then drop them, so that none is taken for
        the next exchange's."""
        time.sleep(self._settle_s)
        port = self._require_open()
        port.clearPort()
        port.is_using = False

    def write_goal(self, positions_rad) -> None:
        """One sync write of goal positions (rad, joint order). No answer comes back, by the protocol."""
        self._require_open()
        positions_rad = np.asarray(positions_rad, dtype=np.float64).reshape(-1)
        if positions_rad.shape[0] != len(self.joints):
            raise ValueError(
                f"write_goal: {positions_rad.shape[0]} positions for {len(self.joints)} joints {self.joints}"
            )
        for (joint, s), q in zip(self.servos.items(), positions_rad, strict=True):
            if not math.isfinite(q):
                raise ValueError(f"write_goal: joint {joint!r} goal is {q}")
            ticks = dt.rad_to_ticks(s.offset_rad + s.direction * q)
            if not 0 <= ticks <= dt.MAX_POSITION_TICKS:
                raise ValueError(
                    f"write_goal: joint {joint!r} goal {q:.4f} rad is servo position {ticks}, outside "
                    f"0..{dt.MAX_POSITION_TICKS} (position control mode)"
                )
            self._goal_write.changeParam(s.id, list(dt.encode(dt.GOAL_POSITION, ticks)))
        self._send(self._goal_write, "goal write")
        self.stats.writes += 1

    def _send(self, group: GroupSyncWrite, what: str) -> None:
        result = group.txPacket()
        if result != COMM_SUCCESS:
            self.stats.failures += 1
            self._require_open().is_using = False
            raise BusError(f"{what}: {self._ph.getTxRxResult(result)}")

    def read_hardware_errors(self) -> dict[str, tuple[int, list[str]]]:
        """{joint: (Hardware Error Status, names of its bits)} for every joint; (0, []) when healthy."""
        self._require_open()
        out = {}
        for joint in self.joints:
            try:
                code = self._read(joint, dt.HARDWARE_ERROR_STATUS)
            except LinkError as e:
                raise BusError(str(e)) from e
            out[joint] = (code, dt.hardware_error_names(code))
        return out

    def torque_off(self) -> None:
        """Let every joint go limp (one sync write)."""
        self._require_open()
        self._send(self._torque_off_write, "torque off")

    def torque_on(self) -> None:
        """Drive every joint to its goal again (one sync write); write the goals first."""
        self._require_open()
        self._send(self._torque_on_write, "torque on")

    def close(self) -> None:
        """Close the port. The torque stays as it is: call torque_off() first to let the joints go."""
        if self._port is not None:
            if self._port.is_open:
                self._port.closePort()
            self._port = None

    def __enter__(self) -> DynamixelBus:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _present(data: list[int], f: dt.Field) -> int:
    """Register `f` out of the present-state block read from address PRESENT_STATE_ADDRESS."""
    return dt.decode(f, data, f.address - dt.PRESENT_STATE_ADDRESS)
