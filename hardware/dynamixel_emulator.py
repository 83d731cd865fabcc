"""A bus of emulated Dynamixel X-series servos behind a pseudo-terminal, for tests and hardware-in-the-loop.

The unmodified dynamixel-sdk (or any Protocol 2.0 host) opens the pty's slave path as if it were a
USB adapter; the emulator answers as real servos do: status packets after each servo's return delay,
bytes paced at the baud rate, sync read answers in the order asked, broadcast rules, the alert bit
while a hardware error is latched. It hears only packets sent at its servos' baud rate (read from the
pty's termios, which on Linux the master shares with the slave), so a wrong baud rate looks as it does
on a real bus: silence. Faults (corrupted or lost bytes, a silent servo, a hardware error) are set
while it runs, so the driver's error paths can be exercised without hardware.

Limits of the imitation: the host's instruction is taken as received one wire time after it arrives
(the pty delivers it at once); bytes go out in chunks of about a millisecond of wire time; REG WRITE,
ACTION, BULK and FAST instructions get an instruction error (or, broadcast, no answer).
"""

from __future__ import annotations

import argparse
import math
import os
import random
import select
import struct
import threading
import time
from dataclasses import dataclass, fields
from typing import Protocol

import crc

from hardware import dynamixel_table as dt
from hardware.pty_port import BITS_PER_BYTE, PACE_CHUNK_S, PtyPort

BROADCAST_ID = 0xFE
MAX_ID = 252
HEADER = b"\xff\xff\xfd\x00"
MAX_PACKET_LENGTH = 1024  # the length field of any packet this bus carries

INST_PING = 0x01
INST_READ = 0x02
INST_WRITE = 0x03
INST_REBOOT = 0x08
INST_STATUS = 0x55
INST_SYNC_READ = 0x82
INST_SYNC_WRITE = 0x83

# status packet error numbers (Protocol 2.0), in the low 7 bits of the error byte
ERR_RESULT_FAIL = 1
ERR_INSTRUCTION = 2
ERR_CRC = 3
ERR_DATA_RANGE = 4
ERR_DATA_LENGTH = 5
ERR_DATA_LIMIT = 6
ERR_ACCESS = 7

PARTIAL_PACKET_TIMEOUT_S = 0.1  # a packet left unfinished this long is forgotten, as the firmware does
_FIELDS = tuple(f for f in vars(dt).values() if isinstance(f, dt.Field))

_CRC16 = crc.Calculator(  # Protocol 2.0: CRC-16, polynomial 0x8005, initial value 0, not reflected
    crc.Configuration(
        width=16, polynomial=0x8005, init_value=0, final_xor_value=0, reverse_input=False, reverse_output=False
    ),
    optimized=True,
)


def crc16(data: bytes) -> int:
    return _CRC16.checksum(data)


def stuff(body: bytes) -> bytes:
    """Byte stuffing: FF FF FD inside instruction and parameters goes on the wire as FF FF FD FD."""
    out = bytearray()
    for i, b in enumerate(body):
        out.append(b)
        if b == 0xFD and i >= 2 and body[i - 1] == 0xFF and body[i - 2] == 0xFF:
            out.append(0xFD)
    return bytes(out)


def unstuff(wire: bytes) -> bytes:
    out = bytearray()
    i = 0
    while i < len(wire):
        out.append(wire[i])
        i += 1
        if out[-3:] == b"\xff\xff\xfd" and i < len(wire) and wire[i] == 0xFD:
            i += 1
    return bytes(out)


def frame(packet_id: int, body: bytes) -> bytes:
    """A whole Protocol 2.0 packet on the wire: header, ID, length, stuffed body (instruction onward), CRC."""
    wire_body = stuff(body)
    length = len(wire_body) + 2
    head = HEADER + bytes([packet_id, length & 0xFF, length >> 8]) + wire_body
    return head + crc16(head).to_bytes(2, "little")


class Plant(Protocol):
    """What moves the emulated servos: MuJoCo later, a first-order lag by default. Keyed by servo ID."""

    def step(self, goal_rad_by_id: dict[int, float], torque_on: dict[int, bool], dt_s: float) -> None: ...

    def state(self) -> dict[int, tuple[float, float, float]]: ...  # id -> (pos_rad, vel_radps, current_A)


class LagPlant:
    """Each joint follows its goal with a first-order lag while its torque is on, and stays put when off."""

    def __init__(
        self,
        ids: tuple[int, ...],
        time_constant_s: float = 0.05,
        current_per_rad_A: float = 1.0,
        max_current_A: float = 2.3,
        initial_rad: float = 0.0,
    ):
        self.time_constant_s = time_constant_s
        self.current_per_rad_A = current_per_rad_A
        self.max_current_A = max_current_A  # XM430-W350 stall current at 12 V
        self._state = {i: (initial_rad, 0.0, 0.0) for i in ids}

    def step(self, goal_rad_by_id: dict[int, float], torque_on: dict[int, bool], dt_s: float) -> None:
        for i, (pos, _, _) in self._state.items():
            if not torque_on[i]:
                self._state[i] = (pos, 0.0, 0.0)
                continue
            error = goal_rad_by_id[i] - pos
            new_pos = goal_rad_by_id[i] - error * math.exp(-dt_s / self.time_constant_s)
            current = max(-self.max_current_A, min(self.max_current_A, self.current_per_rad_A * error))
            self._state[i] = (new_pos, (new_pos - pos) / dt_s, current)

    def state(self) -> dict[int, tuple[float, float, float]]:
        return dict(self._state)


@dataclass(frozen=True)
class EmulatorCfg:
    ids: tuple[int, ...] = (1, 2, 3)
    baud: int = 1_000_000  # every servo's (factory: 57600); one of dynamixel_table.BAUD_RATE_BY_CODE
    return_delay_us: int = 500  # X-series factory default (register 250, unit 2 us)
    command_timeout_s: float | None = 1.0  # firmware watchdog: torque off when no goal arrives this long
    plant_rate_hz: float = 200.0
    model_number: int = dt.MODEL_NUMBER_XM430_W350
    firmware_version: int = 46
    seed: int = 0  # random numbers of the fault injection

    def __post_init__(self):
        if not self.ids or len(set(self.ids)) != len(self.ids) or not all(0 <= i <= MAX_ID for i in self.ids):
            raise ValueError(f"EmulatorCfg.ids: need distinct IDs in 0..{MAX_ID}, got {self.ids}")
        if self.baud not in dt.CODE_BY_BAUD_RATE:
            raise ValueError(
                f"EmulatorCfg.baud: {self.baud} is not an X-series baud rate {sorted(dt.CODE_BY_BAUD_RATE)}"
            )
        if not 0 <= self.return_delay_us <= 508 or self.return_delay_us % 2:
            raise ValueError(f"EmulatorCfg.return_delay_us: need an even number in 0..508, got {self.return_delay_us}")
        if self.command_timeout_s is not None and self.command_timeout_s <= 0:
            raise ValueError(f"EmulatorCfg.command_timeout_s: need > 0 or None, got {self.command_timeout_s}")
        if self.plant_rate_hz <= 0:
            raise ValueError(f"EmulatorCfg.plant_rate_hz: need > 0, got {self.plant_rate_hz}")


@dataclass
class EmulatorCounters:
    packets_in: int = 0  # complete instruction packets seen on the wire
    crc_errors: int = 0
    baud_mismatches: int = 0  # packets no servo heard: sent at a baud rate other than theirs
    answered: int = 0  # status packets sent
    dropped_bytes: int = 0  # fault injection
    flipped_bytes: int = 0  # fault injection
    command_timeouts: int = 0  # torque turned off by the firmware watchdog


class _Servo:
    """One servo's control table, and what the firmware keeps beside it."""

    def __init__(self, key: int, table: bytearray):
        self.key = key  # the ID it was built with: the plant's name for it, even after an ID change
        self.table = table
        self.silent = False  # fault injection: off the bus
        self.last_command_s = time.monotonic()  # firmware watchdog: last goal position or torque on

    def get(self, field: dt.Field) -> int:
        return dt.decode(field, self.table, field.address)

    def set(self, field: dt.Field, value: int) -> None:
        self.table[field.address : field.address + field.size] = dt.encode(field, value)

    @property
    def id(self) -> int:
        return self.get(dt.ID)

    @property
    def baud(self) -> int:
        return dt.BAUD_RATE_BY_CODE.get(self.get(dt.BAUD_RATE), 0)


class DynamixelEmulator:
    """Servos on a pseudo-terminal. `start()` returns the path a host opens; `stop()` or a `with` block ends it."""

    def __init__(self, cfg: EmulatorCfg = EmulatorCfg(), plant: Plant | None = None):
        self.cfg = cfg
        self.plant = plant if plant is not None else LagPlant(cfg.ids)
        state = self.plant.state()
        self._servos = [_Servo(i, self._factory_table(i, state[i][0])) for i in cfg.ids]
        self._lock = threading.Lock()  # control tables and counters
        self._counters = EmulatorCounters()
        self._rng = random.Random(cfg.seed)
        self._flip_fraction = 0.0
        self._drop_fraction = 0.0
        self._pty = PtyPort()
        self.port = ""

    # --- life cycle ----------------------------------------------------------------------------
    def start(self) -> str:
        self.port = self._pty.start({"dxl-emulator-bus": self._serve, "dxl-emulator-plant": self._run_plant})
        return self.port

    def stop(self) -> None:
        self._pty.stop()

    def __enter__(self) -> DynamixelEmulator:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- inspection and fault injection (any thread, at run time) ------------------------------
    def counters(self) -> EmulatorCounters:
        with self._lock:
            return EmulatorCounters(**{f.name: getattr(self._counters, f.name) for f in fields(EmulatorCounters)})

    def read_register(self, servo_id: int, field: dt.Field) -> int:
        with self._lock:
            return self._servo(servo_id).get(field)

    def write_register(self, servo_id: int, field: dt.Field, value: int) -> None:
        """Set a register directly, bypassing the bus and its access rules (test setup: a wrong mode, a baud)."""
        with self._lock:
            self._servo(servo_id).set(field, value)

    def set_output_faults(self, flip_fraction: float = 0.0, drop_fraction: float = 0.0) -> None:
        """Corrupt (one bit flipped) or lose this fraction of the bytes the servos send."""
        for name, value in (("flip_fraction", flip_fraction), ("drop_fraction", drop_fraction)):
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name}: need a fraction in 0..1, got {value}")
        self._flip_fraction, self._drop_fraction = flip_fraction, drop_fraction

    def set_silent(self, servo_id: int, silent: bool = True) -> None:
        """Take a servo off the bus (a broken cable): it neither hears nor answers."""
        with self._lock:
            self._servo(servo_id).silent = silent

    def set_hardware_error(self, servo_id: int, code: int) -> None:
        """Latch a hardware error (e.g. 0x20 overload), as the firmware would: alert bit on, and torque
        off when the Shutdown register lists the error. Cleared by a REBOOT instruction."""
        with self._lock:
            s = self._servo(servo_id)
            s.set(dt.HARDWARE_ERROR_STATUS, code)
            if code & s.get(dt.SHUTDOWN):
                s.set(dt.TORQUE_ENABLE, 0)

    def _servo(self, servo_id: int) -> _Servo:
        for s in self._servos:
            if s.key == servo_id:
                return s
        raise KeyError(f"no emulated servo was built with ID {servo_id} (built: {self.cfg.ids})")

    # --- the control table ---------------------------------------------------------------------
    def _factory_table(self, servo_id: int, pos_rad: float) -> bytearray:
        s = _Servo(servo_id, bytearray(dt.TABLE_SIZE))
        s.set(dt.MODEL_NUMBER, self.cfg.model_number)
        s.set(dt.FIRMWARE_VERSION, self.cfg.firmware_version)
        s.set(dt.ID, servo_id)
        s.set(dt.BAUD_RATE, dt.CODE_BY_BAUD_RATE[self.cfg.baud])
        s.set(dt.RETURN_DELAY_TIME, self.cfg.return_delay_us // 2)
        s.set(dt.OPERATING_MODE, dt.OPERATING_MODE_POSITION)
        s.set(dt.MAX_POSITION_LIMIT, dt.MAX_POSITION_TICKS)
        s.set(dt.MIN_POSITION_LIMIT, 0)
        s.set(dt.SHUTDOWN, dt.DEFAULT_SHUTDOWN)
        self._reset_ram(s, pos_rad)
        return s.table

    @staticmethod
    def _reset_ram(s: _Servo, pos_rad: float) -> None:
        """What a power-up or reboot leaves in RAM: defaults, torque off, errors cleared, goal = where it is."""
        s.table[dt.EEPROM_END :] = bytes(dt.TABLE_SIZE - dt.EEPROM_END)
        s.set(dt.STATUS_RETURN_LEVEL, 2)
        s.set(dt.POSITION_P_GAIN, dt.DEFAULT_POSITION_P_GAIN)
        s.set(dt.GOAL_POSITION, dt.rad_to_ticks(pos_rad))
        s.set(dt.PRESENT_POSITION, dt.rad_to_ticks(pos_rad))
        s.set(dt.PRESENT_INPUT_VOLTAGE, 120)
        s.set(dt.PRESENT_TEMPERATURE, 30)

    def _write(self, s: _Servo, address: int, data: bytes) -> int:
        """Apply a WRITE (or one servo's share of a SYNC WRITE) as the firmware checks it; returns the error number."""
        end = address + len(data)
        if end > dt.TABLE_SIZE:
            return ERR_ACCESS
        if address < dt.EEPROM_END and s.get(dt.TORQUE_ENABLE):
            return ERR_ACCESS
        touched = [f for f in _FIELDS if f.address < end and address < f.address + f.size]
        for f in touched:
            if not f.writable:
                return ERR_ACCESS
            if f.address < address or f.address + f.size > end:
                return ERR_DATA_LENGTH  # part of a multi-byte register
        new = _Servo(s.key, bytearray(s.table))
        new.table[address:end] = data
        for f in touched:
            error = self._check_value(new, f)
            if error:
                return error
        if dt.TORQUE_ENABLE in touched:
            if new.get(dt.TORQUE_ENABLE) and s.get(dt.HARDWARE_ERROR_STATUS) & s.get(dt.SHUTDOWN):
                new.set(dt.TORQUE_ENABLE, 0)  # shut down until rebooted: the write is ignored
            if new.get(dt.TORQUE_ENABLE) and not s.get(dt.TORQUE_ENABLE):
                s.last_command_s = time.monotonic()
        if dt.GOAL_POSITION in touched:
            s.last_command_s = time.monotonic()
        s.table[:] = new.table
        return 0

    @staticmethod
    def _check_value(s: _Servo, f: dt.Field) -> int:
        v = s.get(f)
        if f == dt.ID and v > MAX_ID:
            return ERR_DATA_RANGE
        if f == dt.BAUD_RATE and v not in dt.BAUD_RATE_BY_CODE:
            return ERR_DATA_RANGE
        if f == dt.OPERATING_MODE and v not in dt.OPERATING_MODE_NAMES:
            return ERR_DATA_RANGE
        if f == dt.TORQUE_ENABLE and v not in (0, 1):
            return ERR_DATA_RANGE
        if f == dt.GOAL_POSITION and s.get(dt.OPERATING_MODE) == dt.OPERATING_MODE_POSITION:
            if not s.get(dt.MIN_POSITION_LIMIT) <= v <= s.get(dt.MAX_POSITION_LIMIT):
                return ERR_DATA_LIMIT
        return 0

    # --- the plant thread ----------------------------------------------------------------------
    def _run_plant(self) -> None:
        dt_s = 1.0 / self.cfg.plant_rate_hz
        next_s = time.monotonic()
        while not self._pty.stop_event.is_set():
            next_s += dt_s
            now = time.monotonic()
            if next_s > now:
                time.sleep(next_s - now)
            elif now - next_s > 10 * dt_s:
                next_s = now  # far behind (a busy machine): drop the backlog rather than race to catch up
            with self._lock:
                self._enforce_command_timeout()
                goals = {s.key: dt.ticks_to_rad(s.get(dt.GOAL_POSITION)) for s in self._servos}
                torque = {s.key: bool(s.get(dt.TORQUE_ENABLE)) for s in self._servos}
            self.plant.step(goals, torque, dt_s)
            state = self.plant.state()
            with self._lock:
                for s in self._servos:
                    pos_rad, vel_radps, current_A = state[s.key]
                    s.set(dt.PRESENT_POSITION, dt.rad_to_ticks(pos_rad))
                    s.set(dt.PRESENT_VELOCITY, dt.radps_to_velocity_units(vel_radps))
                    s.set(dt.PRESENT_CURRENT, max(-32768, min(32767, dt.A_to_current_units(current_A))))

    def _enforce_command_timeout(self) -> None:
        timeout_s = self.cfg.command_timeout_s
        if timeout_s is None:
            return
        now = time.monotonic()
        for s in self._servos:
            if s.get(dt.TORQUE_ENABLE) and now - s.last_command_s > timeout_s:
                s.set(dt.TORQUE_ENABLE, 0)
                self._counters.command_timeouts += 1

    # --- the bus thread ------------------------------------------------------------------------
    def client_baud(self) -> int:
        """The baud rate the host set on its end of the pty."""
        return self._pty.host_baud()

    def _serve(self) -> None:
        buf = bytearray()
        last_rx_s = 0.0
        while not self._pty.stop_event.is_set():
            if not select.select([self._pty.master], [], [], 0.05)[0]:
                continue
            chunk = os.read(self._pty.master, 4096)
            now = time.monotonic()
            if now - last_rx_s > PARTIAL_PACKET_TIMEOUT_S:
                buf.clear()
            last_rx_s = now
            buf += chunk
            while (packet := _take_packet(buf)) is not None:
                self._handle(packet, now)

    def _handle(self, packet: bytes, arrival_s: float) -> None:
        baud = self.client_baud()
        byte_s = BITS_PER_BYTE / baud
        with self._lock:
            self._counters.packets_in += 1
            at_baud = [s for s in self._servos if s.baud == baud]
            if not at_baud:
                self._counters.baud_mismatches += 1
                return
            listeners = [s for s in at_baud if not s.silent]
            # the alert bit as it was when the instruction came (a REBOOT answers before clearing errors)
            alerted = {s.key for s in listeners if s.get(dt.HARDWARE_ERROR_STATUS)}
            packet_id = packet[4]
            if crc16(packet[:-2]) != int.from_bytes(packet[-2:], "little"):
                self._counters.crc_errors += 1
                replies = [(s, ERR_CRC, b"") for s in listeners if s.id == packet_id]
            else:
                body = unstuff(packet[7:-2])
                replies = self._execute(listeners, packet_id, body[0], body[1:])
            schedule = []  # (servo's first byte time, wire bytes)
            t = arrival_s + len(packet) * byte_s  # the host's bytes take this long on a real wire
            for s, error, params in replies:
                if s.key in alerted:
                    error |= dt.ERROR_ALERT_BIT
                t += s.get(dt.RETURN_DELAY_TIME) * dt.RETURN_DELAY_UNIT_S
                wire = frame(s.id, bytes([INST_STATUS, error]) + params)
                schedule.append((t, wire))
                t += len(wire) * byte_s
            self._counters.answered += len(schedule)
        for start_s, wire in schedule:
            self._transmit(start_s, wire, byte_s)

    def _execute(
        self, listeners: list[_Servo], packet_id: int, inst: int, params: bytes
    ) -> list[tuple[_Servo, int, bytes]]:
        """Run one instruction on the servos that heard it; returns who answers, with error and parameters."""
        by_id = {s.id: s for s in listeners}
        target = by_id.get(packet_id)
        if inst == INST_PING:
            pingers = (
                sorted(by_id.values(), key=lambda s: s.id) if packet_id == BROADCAST_ID else [target] if target else []
            )
            return [(s, 0, bytes(s.table[0:2]) + bytes([s.get(dt.FIRMWARE_VERSION)])) for s in pingers]
        if inst == INST_READ and target and len(params) == 4:
            if _level(target) < 1:
                return []
            address, length = struct.unpack("<HH", params)
            if address + length > dt.TABLE_SIZE:
                return [(target, ERR_ACCESS, b"")]
            return [(target, 0, bytes(target.table[address : address + length]))]
        if inst == INST_WRITE and len(params) >= 2:
            address = params[0] | params[1] << 8
            if packet_id == BROADCAST_ID:
                for s in listeners:
                    self._write(s, address, params[2:])
                return []
            if target:
                error = self._write(target, address, params[2:])
                return [(target, error, b"")] if _level(target) >= 2 else []
            return []
        if inst == INST_SYNC_READ and packet_id == BROADCAST_ID and len(params) >= 4:
            address, length = struct.unpack("<HH", params[:4])
            askers = [by_id[i] for i in params[4:] if i in by_id and _level(by_id[i]) >= 1]
            if address + length > dt.TABLE_SIZE:
                return [(s, ERR_ACCESS, b"") for s in askers]
            return [(s, 0, bytes(s.table[address : address + length])) for s in askers]
        if inst == INST_SYNC_WRITE and packet_id == BROADCAST_ID and len(params) >= 4:
            address, length = struct.unpack("<HH", params[:4])
            for k in range(4, len(params) - length, length + 1):
                s = by_id.get(params[k])
                if s is not None:
                    self._write(s, address, params[k + 1 : k + 1 + length])
            return []
        if inst == INST_REBOOT:
            rebooted = listeners if packet_id == BROADCAST_ID else [target] if target else []
            for s in rebooted:
                self._reset_ram(s, dt.ticks_to_rad(s.get(dt.PRESENT_POSITION)))
            return [(target, 0, b"")] if packet_id != BROADCAST_ID and target and _level(target) >= 2 else []
        if packet_id != BROADCAST_ID and target:
            return [(target, ERR_INSTRUCTION, b"")]  # unknown instruction, or known with wrong parameters
        return []

    def _transmit(self, start_s: float, wire: bytes, byte_s: float) -> None:
        """Write `wire` so its bytes leave no earlier than their wire times, with the injected faults."""
        out: list[int | None] = []  # None: a lost byte, which still takes its time on the wire
        with self._lock:
            for b in wire:
                if self._drop_fraction and self._rng.random() < self._drop_fraction:
                    out.append(None)
                    self._counters.dropped_bytes += 1
                elif self._flip_fraction and self._rng.random() < self._flip_fraction:
                    out.append(b ^ (1 << self._rng.randrange(8)))
                    self._counters.flipped_bytes += 1
                else:
                    out.append(b)
        chunk = max(1, int(PACE_CHUNK_S / byte_s))
        sent = 0
        while sent < len(out):
            upto = min(len(out), sent + chunk)
            wait_s = start_s + upto * byte_s - time.monotonic()
            if wait_s > 0:
                time.sleep(wait_s)
            data = bytes(b for b in out[sent:upto] if b is not None)
            try:
                os.write(self._pty.master, data)
            except BlockingIOError:
                pass  # nobody is reading the port and its buffer is full: the bytes go nowhere, as on a wire
            sent = upto


def _level(s: _Servo) -> int:
    return s.get(dt.STATUS_RETURN_LEVEL)


def _take_packet(buf: bytearray) -> bytes | None:
    """Remove and return the next complete packet (wire bytes) from `buf`, skipping noise before it."""
    while True:
        start = buf.find(HEADER)
        if start < 0:
            del buf[: max(0, len(buf) - 3)]  # keep what may be the start of a header
            return None
        del buf[:start]
        if len(buf) < 7:
            return None
        length = buf[5] | buf[6] << 8
        if not 3 <= length <= MAX_PACKET_LENGTH:
            del buf[:1]
            continue
        if len(buf) < 7 + length:
            return None
        packet = bytes(buf[: 7 + length])
        del buf[: 7 + length]
        return packet


def main() -> None:
    """Serve emulated servos on a pty until Ctrl-C: `python -m hardware.dynamixel_emulator --ids 1 2 3`."""
    p = argparse.ArgumentParser(description=main.__doc__)
    p.add_argument("--ids", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--baud", type=int, default=1_000_000)
    p.add_argument("--return-delay-us", type=int, default=500)
    p.add_argument("--command-timeout-s", type=float, default=1.0)
    a = p.parse_args()
    cfg = EmulatorCfg(
        ids=tuple(a.ids), baud=a.baud, return_delay_us=a.return_delay_us, command_timeout_s=a.command_timeout_s
    )
    with DynamixelEmulator(cfg) as emu:
        print(f"servos {list(cfg.ids)} at {cfg.baud} baud on {emu.port}", flush=True)
        try:
            while True:
                time.sleep(1.0)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
