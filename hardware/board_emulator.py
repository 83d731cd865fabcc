"""A motor board or flight controller behind a pseudo-terminal, speaking the motor-board protocol (PROTOCOL.md).

A host (board_link.BoardLink, or anything else that implements PROTOCOL.md) opens the pty's slave path as
if it were the board's UART or USB CDC port. The emulator behaves as the firmware must: it boots IDLE and
sends HEARTBEATs, accepts a CONFIG only for its own actuator count and for a timeout and rate it supports,
applies COMMANDs to a plant, streams STATE at the configured rate, turns the outputs off itself when no
COMMAND arrives within the timeout, and latches an ESTOP until it is reset. Its bytes leave paced at the
baud rate, and it hears only a host set to that rate (read from the pty's termios, which on Linux the master
shares with the slave), so a wrong baud rate looks as it does on a real wire: no answer, only noise. Faults
(corrupted or lost bytes, a cut TX line) are set while it runs, so the host's error paths can be exercised.

Limits of the imitation: input is taken as received one wire time after it arrives (the pty delivers it at
once); bytes go out in chunks of about a millisecond of wire time; at a wrong baud rate the host reads
random bytes instead of the misread ones; the plant runs on wall-clock time from a Python thread, so a busy
machine makes its steps late (a backlog is dropped, not raced through).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import queue
import random
import select
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from hardware.frames import FrameDecoder, encode_frame
from hardware.messages import (
    HEADER,
    MAX_ERROR_TEXT_BYTES,
    PROTOCOL_VERSION,
    SEQ_MODULUS,
    TIME_MODULUS,
    Command,
    CommandMode,
    Config,
    ConfigStatus,
    DecodeError,
    DeviceStatus,
    ErrorCode,
    ErrorReport,
    Heartbeat,
    Imu,
    Message,
    MsgType,
    SequenceTracker,
    State,
    StateFlags,
    UnknownTypeError,
    VersionError,
    decode_message,
)
from hardware.pty_port import BITS_PER_BYTE, PACE_CHUNK_S, PtyPort

HEARTBEAT_PERIOD_S = 0.1  # PROTOCOL.md: a HEARTBEAT at least this often when nothing else is sent
BAD_FRAME_ERRORS_PER_S = 10  # PROTOCOL.md: ERROR 1, 2 or 3 at most this often


class BoardPlant(Protocol):
    """What the emulated board drives, in wire order (index = actuator).

    The emulator calls all three methods under one lock, so a plant need not be thread-safe.
    """

    num_actuators: int

    def apply(
        self, command: Command | None
    ) -> None: ...  # None: outputs off (before the first command, timeout, e-stop)

    def step(
        self, dt_s: float
    ) -> None: ...  # advance dt_s; the emulator calls it from its own thread at cfg.plant_rate_hz

    # position, velocity, effort, IMU
    def state(self) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...], Imu | None]: ...


IMU_AT_REST = Imu(quat_wxyz=(1.0, 0.0, 0.0, 0.0), gyro_rad_s=(0.0, 0.0, 0.0), accel_m_s2=(0.0, 0.0, 9.81))


class LagBoardPlant:
    """A stand-in plant: in POSITION mode each actuator follows its target with a first-order lag and
    reports the PD torque as effort; in TORQUE or THRUST mode it holds still and reports the target as
    effort; with the outputs off it stays where it is with zero velocity and effort. The IMU (if any) rests
    level."""

    def __init__(self, num_actuators: int, with_imu: bool = False, time_constant_s: float = 0.05):
        if num_actuators < 1:
            raise ValueError(f"LagBoardPlant: need at least 1 actuator, got {num_actuators}")
        self.num_actuators = num_actuators
        self.time_constant_s = time_constant_s
        self._imu = IMU_AT_REST if with_imu else None
        self._command: Command | None = None
        self._pos = [0.0] * num_actuators
        self._vel = [0.0] * num_actuators
        self._effort = [0.0] * num_actuators

    def apply(self, command: Command | None) -> None:
        self._command = command
        if command is None or command.mode != CommandMode.POSITION:  # no lag: the effort is the output itself
            self._vel = [0.0] * self.num_actuators
            self._effort = [0.0] * self.num_actuators if command is None else list(command.targets)

    def step(self, dt_s: float) -> None:
        c = self._command
        if c is None or c.mode != CommandMode.POSITION:
            return
        kp, kd = c.kp_Nm_per_rad, c.kd_Nms_per_rad
        if kp is None or kd is None:
            raise ValueError("COMMAND in POSITION mode needs kp_Nm_per_rad and kd_Nms_per_rad")
        for i, pos in enumerate(self._pos):
            target = c.targets[i]
            new_pos = target - (target - pos) * math.exp(-dt_s / self.time_constant_s)
            self._pos[i] = new_pos
            self._vel[i] = (new_pos - pos) / dt_s
            self._effort[i] = kp[i] * (target - new_pos) - kd[i] * self._vel[i]

    def state(self) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...], Imu | None]:
        return tuple(self._pos), tuple(self._vel), tuple(self._effort), self._imu


@dataclass(frozen=True)
class BoardEmulatorCfg:
    baud: int = 1_000_000  # the board's UART rate; it hears only a host set to the same
    plant_rate_hz: float = 200.0  # plant steps (and command-timeout checks) per second
    max_control_rate_hz: int = 1000  # the fastest STATE rate a CONFIG may ask for
    min_command_timeout_ms: int = 10  # the command timeouts a CONFIG may ask for
    max_command_timeout_ms: int = 5000
    modes: tuple[CommandMode, ...] = tuple(CommandMode)  # COMMAND modes the firmware accepts; others get ERROR 12
    bus_voltage_mv: int = 24_000  # reported in STATE
    seed: int = 0  # random numbers of the fault injection

    def __post_init__(self):
        for name in ("baud", "plant_rate_hz", "max_control_rate_hz", "min_command_timeout_ms"):
            if getattr(self, name) <= 0:
                raise ValueError(f"BoardEmulatorCfg.{name}: need > 0, got {getattr(self, name)}")
        if not self.min_command_timeout_ms <= self.max_command_timeout_ms < 1 << 16:
            raise ValueError(
                f"BoardEmulatorCfg: command timeouts {self.min_command_timeout_ms}.."
                f"{self.max_command_timeout_ms} ms: need min <= max < 65536"
            )
        if not self.modes:
            raise ValueError("BoardEmulatorCfg.modes: a board accepts at least one COMMAND mode")


@dataclass
class BoardCounters:
    frames_in: int = 0  # frames that passed COBS and CRC
    frames_out: int = 0  # frames sent (before output faults)
    crc_errors: int = 0
    framing_errors: int = 0  # bad COBS, too short for a CRC, or no 0x00 within the longest frame
    bad_messages: int = 0  # good frames the board cannot use (version, type, length): ERROR 1, 2 or 3
    host_lost: int = 0  # host messages missed, from its sequence numbers
    stale_messages: int = 0  # host seq at or behind the last one: counted, not applied
    configs_accepted: int = 0
    configs_rejected: int = 0
    commands_applied: int = 0
    commands_refused: int = 0  # ERROR 5, 6, 8 or 12
    timeouts: int = 0  # outputs turned off because no COMMAND came within the timeout
    estops: int = 0  # ESTOP messages obeyed (a host sends three or more per e-stop)
    states_sent: int = 0
    states_skipped: int = 0  # due while earlier frames still waited for the wire: the rate is too high for the baud
    baud_mismatch_bytes: int = 0  # bytes from a host at another baud rate: unheard
    flipped_bytes: int = 0  # fault injection
    dropped_bytes: int = 0  # fault injection


@dataclass
class _Firmware:
    """What the firmware keeps in RAM: all of it is lost at a reset."""

    boot_s: float
    status: DeviceStatus = DeviceStatus.IDLE
    config: Config | None = None
    power_on: bool = False  # the motor power stage
    command_seq: int = 0  # seq of the COMMAND being applied
    last_command_s: float = 0.0
    next_state_s: float = 0.0
    seq: int = 0  # this board's message counter
    host: SequenceTracker = dataclasses.field(default_factory=SequenceTracker)
    bad_frame_errors_s: deque = dataclasses.field(default_factory=deque)  # times of recent ERROR 1-3


class BoardEmulator:
    """A board on a pseudo-terminal. `start()` returns the path a host opens; `stop()` or a `with` block ends it.

    `start()` is a power-up (a fresh board on a new pty path); `reset()` is the reset button (same path).
    """

    def __init__(self, plant: BoardPlant, cfg: BoardEmulatorCfg = BoardEmulatorCfg()):
        self.plant = plant
        self.cfg = cfg
        self.port = ""
        self._byte_s = BITS_PER_BYTE / cfg.baud
        self._lock = threading.Lock()  # firmware state, plant, counters, fault settings
        self._counters = BoardCounters()
        self._decoder = FrameDecoder()
        self._rng = random.Random(cfg.seed)
        self._flip_fraction = 0.0
        self._drop_fraction = 0.0
        self._silent = False
        self._fw = _Firmware(boot_s=time.monotonic())
        self._last_tx_s = 0.0
        self._tx: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._pty = PtyPort()

    # --- life cycle ----------------------------------------------------------------------------
    def start(self) -> str:
        """Power up on a new pty; returns its slave path."""
        if self._pty.running:
            raise RuntimeError(f"board emulator already running on {self.port}")
        self._tx = queue.SimpleQueue()
        self.reset()
        self.port = self._pty.start(
            {
                "board-emulator-rx": self._receive,
                "board-emulator-control": self._control,
                "board-emulator-tx": self._transmit,
            }
        )
        return self.port

    def stop(self) -> None:
        """Power off: the pty goes away, and a host holding it open gets an I/O error."""
        self._pty.stop()

    def reset(self) -> None:
        """The reset button: outputs off, configuration and e-stop cleared, seq from 0, a 0x00, then HEARTBEATs."""
        with self._lock:
            self.plant.apply(None)
            self._fw = _Firmware(boot_s=time.monotonic())
            if not self._silent:
                self._tx.put(b"\x00")  # ends whatever partial frame the host's decoder holds
            self._send(Heartbeat(status=DeviceStatus.IDLE))

    def __enter__(self) -> BoardEmulator:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- inspection and fault injection (any thread, at run time) ------------------------------
    @property
    def counters(self) -> BoardCounters:
        """A snapshot."""
        with self._lock:
            c = dataclasses.replace(self._counters)
            s = self._decoder.stats
            c.frames_in, c.crc_errors = s.frames_ok, s.crc_errors
            c.framing_errors = s.framing_errors + s.oversize_frames
            return c

    @property
    def status(self) -> DeviceStatus:
        with self._lock:
            return self._fw.status

    def set_output_faults(self, flip_fraction: float = 0.0, drop_fraction: float = 0.0) -> None:
        """Corrupt (one bit flipped) or lose this fraction of the bytes the board sends."""
        for name, value in (("flip_fraction", flip_fraction), ("drop_fraction", drop_fraction)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: need a fraction in 0..1, got {value}")
        with self._lock:
            self._flip_fraction, self._drop_fraction = flip_fraction, drop_fraction

    def set_silent(self, silent: bool = True) -> None:
        """Cut the board's TX line: it sends nothing, but still hears and still enforces the command timeout."""
        with self._lock:
            self._silent = silent

    # --- sending (under the lock) --------------------------------------------------------------
    def _send(self, msg: Message) -> None:
        fw = self._fw
        now = time.monotonic()
        time_us = int((now - fw.boot_s) * 1e6) % TIME_MODULUS
        payload = dataclasses.replace(msg, seq=fw.seq, time_us=time_us).encode()
        fw.seq = (fw.seq + 1) % SEQ_MODULUS  # counted even when the TX line is cut: the host sees the gap
        self._last_tx_s = now
        if not self._silent:
            self._tx.put(encode_frame(payload))
            self._counters.frames_out += 1

    def _send_error(self, code: ErrorCode, text: str) -> None:
        self._send(ErrorReport(code=code, text=text.encode("ascii", "replace").decode()[:MAX_ERROR_TEXT_BYTES]))

    def _send_state(self) -> None:
        fw = self._fw
        if not self._tx.empty():
            self._counters.states_skipped += 1
            return
        pos, vel, effort, imu = self.plant.state()
        flags = StateFlags.MOTOR_POWER if fw.power_on else StateFlags(0)
        self._send(
            State(
                status=fw.status,
                flags=flags,
                command_seq=fw.command_seq,
                bus_voltage_mv=self.cfg.bus_voltage_mv,
                position_rad=pos,
                velocity_rad_s=vel,
                effort_Nm=effort,
                imu=imu,
            )
        )
        self._counters.states_sent += 1

    # --- the receive thread --------------------------------------------------------------------
    def host_baud(self) -> int:
        """The baud rate the host set on its end of the pty."""
        return self._pty.host_baud()

    def _receive(self) -> None:
        wire_free_s = 0.0  # when the last byte received so far has finished arriving on a real wire
        while not self._pty.stop_event.is_set():
            if not select.select([self._pty.master], [], [], 0.05)[0]:
                continue
            try:
                chunk = os.read(self._pty.master, 4096)
            except BlockingIOError:
                continue
            if self.host_baud() != self.cfg.baud:
                with self._lock:
                    self._counters.baud_mismatch_bytes += len(chunk)
                continue
            now = time.monotonic()
            wire_free_s = max(now, wire_free_s) + len(chunk) * self._byte_s
            time.sleep(wire_free_s - now)
            with self._lock:
                for payload in self._decoder.feed(chunk):
                    self._handle(payload)

    def _handle(self, payload: bytes) -> None:
        if len(payload) >= 2 and payload[1] == MsgType.ESTOP:  # PROTOCOL.md: obeyed whatever the version byte says
            self._estop()
            if payload[0] == PROTOCOL_VERSION and len(payload) >= HEADER.size:
                self._track(HEADER.unpack_from(payload)[2])
            return
        try:
            msg = decode_message(payload)
        except DecodeError as e:
            self._bad_message(e)
            return
        if isinstance(msg, Config):
            self._fw.host.last_seq = None  # a CONFIG starts a host session: its seq restarted when it opened the port
        if not self._track(msg.seq):
            return
        if isinstance(msg, Config):
            self._configure(msg)
        elif isinstance(msg, Command):
            self._command(msg)
        elif not isinstance(msg, Heartbeat):  # a HEARTBEAT only says the host lives; it never refreshes the timeout
            self._bad_message(UnknownTypeError(f"{msg.TYPE.name} goes from board to host only"))

    def _track(self, seq: int) -> bool:
        """Count the host's lost and stale messages; False: at or behind the last one, do not apply it."""
        host = self._fw.host
        lost = host.lost
        fresh = host.update(seq)
        self._counters.host_lost += host.lost - lost
        self._counters.stale_messages += not fresh
        return fresh

    def _bad_message(self, e: DecodeError) -> None:
        """ERROR 1, 2 or 3, at most BAD_FRAME_ERRORS_PER_S a second. A field value the message does not have
        (a COMMAND mode 7) also gets 3: PROTOCOL.md has no code of its own for it."""
        self._counters.bad_messages += 1
        recent = self._fw.bad_frame_errors_s
        now = time.monotonic()
        while recent and now - recent[0] >= 1.0:
            recent.popleft()
        if len(recent) < BAD_FRAME_ERRORS_PER_S:
            recent.append(now)
            code = {VersionError: ErrorCode.UNSUPPORTED_VERSION, UnknownTypeError: ErrorCode.UNKNOWN_TYPE}.get(type(e))
            self._send_error(code or ErrorCode.BAD_LENGTH, str(e))

    def _configure(self, msg: Config) -> None:
        fw, cfg = self._fw, self.cfg
        code, problem = ErrorCode.CONFIG_REJECTED, ""
        if fw.status == DeviceStatus.ACTIVE:
            problem = "motors ACTIVE: CONFIG only after the commands stop"
        elif msg.actuator_count != self.plant.num_actuators:
            code = ErrorCode.ACTUATOR_COUNT_MISMATCH
            problem = f"CONFIG asks for {msg.actuator_count} actuators; this board drives {self.plant.num_actuators}"
        elif not cfg.min_command_timeout_ms <= msg.command_timeout_ms <= cfg.max_command_timeout_ms:
            problem = (
                f"command timeout {msg.command_timeout_ms} ms; supported: "
                f"{cfg.min_command_timeout_ms}..{cfg.max_command_timeout_ms} ms"
            )
        elif not 1 <= msg.control_rate_hz <= cfg.max_control_rate_hz:
            problem = f"control rate {msg.control_rate_hz} Hz; supported: 1..{cfg.max_control_rate_hz} Hz"
        accepted = not problem
        self._send(dataclasses.replace(msg, status=ConfigStatus.ACCEPTED if accepted else ConfigStatus.REJECTED))
        if not accepted:
            self._counters.configs_rejected += 1
            self._send_error(code, problem)
            return
        self._counters.configs_accepted += 1
        fw.config = msg
        fw.next_state_s = time.monotonic()
        if fw.status == DeviceStatus.TIMED_OUT:  # a new session: no COMMAND since this CONFIG
            fw.status, fw.power_on = DeviceStatus.IDLE, False

    def _command(self, cmd: Command) -> None:
        fw = self._fw
        n = len(cmd.targets)
        refusal = None
        if fw.status == DeviceStatus.ESTOPPED:
            refusal = (ErrorCode.ESTOPPED, "e-stopped: reset the board to clear it")
        elif fw.config is None:
            refusal = (ErrorCode.NOT_CONFIGURED, "not configured: send CONFIG first")
        elif n != fw.config.actuator_count:
            refusal = (
                ErrorCode.ACTUATOR_COUNT_MISMATCH,
                f"COMMAND for {n} actuators; configured for {fw.config.actuator_count}",
            )
        elif cmd.mode not in self.cfg.modes:
            refusal = (
                ErrorCode.UNSUPPORTED_MODE,
                f"{cmd.mode.name} mode unsupported; this board: {', '.join(m.name for m in self.cfg.modes)}",
            )
        if refusal is not None:
            self._counters.commands_refused += 1
            self._send_error(*refusal)
            return
        self.plant.apply(cmd)
        fw.status, fw.power_on = DeviceStatus.ACTIVE, True
        fw.command_seq, fw.last_command_s = cmd.seq, time.monotonic()
        self._counters.commands_applied += 1

    def _estop(self) -> None:
        """Cut the power stage, latch, and say so at once."""
        self.plant.apply(None)
        self._fw.status, self._fw.power_on = DeviceStatus.ESTOPPED, False
        self._counters.estops += 1
        self._send(Heartbeat(status=DeviceStatus.ESTOPPED))

    # --- the control thread: plant, command timeout, STATE stream, HEARTBEATs ------------------
    def _control(self) -> None:
        step_s = 1.0 / self.cfg.plant_rate_hz
        next_step_s = time.monotonic()
        while not self._pty.stop_event.is_set():
            with self._lock:
                fw = self._fw
                now = time.monotonic()
                if now >= next_step_s:
                    self._enforce_command_timeout(now)
                    self.plant.step(step_s)
                    next_step_s = _next_tick(next_step_s, step_s, now)
                wake_s = min(next_step_s, self._last_tx_s + HEARTBEAT_PERIOD_S)
                if fw.config is not None:
                    if now >= fw.next_state_s:
                        self._send_state()
                        fw.next_state_s = _next_tick(fw.next_state_s, 1.0 / fw.config.control_rate_hz, now)
                    wake_s = min(wake_s, fw.next_state_s)
                if now - self._last_tx_s >= HEARTBEAT_PERIOD_S:
                    self._send(Heartbeat(status=fw.status))
            time.sleep(max(0.0, wake_s - time.monotonic()))

    def _enforce_command_timeout(self, now: float) -> None:
        fw = self._fw
        timeout_ms = fw.config.command_timeout_ms if fw.config else 0
        if fw.status == DeviceStatus.ACTIVE and now - fw.last_command_s > timeout_ms / 1e3:
            self.plant.apply(None)  # zero torque / thrust; the power stage stays on
            fw.status = DeviceStatus.TIMED_OUT
            self._counters.timeouts += 1
            self._send_error(ErrorCode.COMMAND_TIMEOUT, f"no COMMAND for {timeout_ms} ms: outputs off")

    # --- the transmit thread -------------------------------------------------------------------
    def _transmit(self) -> None:
        wire_free_s = 0.0  # when the last byte written so far leaves a real UART
        while not self._pty.stop_event.is_set():
            try:
                frame = self._tx.get(timeout=0.05)
            except queue.Empty:
                continue
            wire = self._damage(frame)
            start_s = max(time.monotonic(), wire_free_s)
            chunk = max(1, int(PACE_CHUNK_S / self._byte_s))
            for i in range(0, len(wire), chunk):
                piece = wire[i : i + chunk]
                wait_s = start_s + (i + len(piece)) * self._byte_s - time.monotonic()
                if wait_s > 0:
                    time.sleep(wait_s)
                try:
                    os.write(self._pty.master, bytes(b for b in piece if b is not None))
                except BlockingIOError:
                    pass  # nobody reads the port and its buffer is full: the bytes go nowhere, as on a wire
            wire_free_s = start_s + len(wire) * self._byte_s

    def _damage(self, frame: bytes) -> list[int | None]:
        """The frame as the host receives it: faults injected (None: a lost byte, which still takes its wire
        time), or noise when the host listens at another baud rate."""
        if self.host_baud() != self.cfg.baud:
            return [self._rng.randrange(256) for _ in frame]
        out: list[int | None] = []
        with self._lock:
            for b in frame:
                if self._drop_fraction and self._rng.random() < self._drop_fraction:
                    out.append(None)
                    self._counters.dropped_bytes += 1
                elif self._flip_fraction and self._rng.random() < self._flip_fraction:
                    out.append(b ^ (1 << self._rng.randrange(8)))
                    self._counters.flipped_bytes += 1
                else:
                    out.append(b)
        return out


def _next_tick(tick_s: float, period_s: float, now: float) -> float:
    """The next deadline of a periodic task; far behind (a busy machine), drop the backlog rather than race it."""
    tick_s += period_s
    return now if now - tick_s > 10 * period_s else tick_s


def point_link(link: Path, target: str) -> None:
    """Make `link` a symlink to `target`, atomically: a host reopening `link` never finds it missing halfway."""
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    tmp.replace(link)


def main() -> None:
    """Serve an emulated board on a pty until Ctrl-C: `python -m hardware.board_emulator --actuators 12`."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--actuators", type=int, default=12)
    p.add_argument("--imu", action="store_true", help="send the IMU block in STATE")
    p.add_argument("--baud", type=int, default=BoardEmulatorCfg.baud)
    p.add_argument("--link", type=Path, help="also point this symlink at the pty: a path that survives restarts")
    a = p.parse_args()
    plant = LagBoardPlant(a.actuators, with_imu=a.imu)
    with BoardEmulator(plant, BoardEmulatorCfg(baud=a.baud)) as emu:
        if a.link is not None:
            point_link(a.link, emu.port)
        print(f"board with {a.actuators} actuators at {a.baud} baud on {emu.port}", flush=True)
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
