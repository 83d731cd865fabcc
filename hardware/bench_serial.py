"""`s2r bench serial`: what the serial links carry, measured over the pty emulators.

Dynamixel (the OpenManipulator-X's four XM430 servos, IDs and baud rate from its hardware YAML, the
factory 500 us return delay): one control cycle is one sync write of goal positions and one sync read of
present current, velocity and position (DynamixelBus.write_goal + read_state), as serial_bridge_node runs
it. The bus is half duplex, so the wire limit of a cycle is the sum of its bytes (sync write, sync read
instruction, every servo's status packet) at 10 bits per byte, plus each servo's return delay.

Motor board (the quadruped's 12 actuators and IMU, hardware/PROTOCOL.md): one control cycle is one STATE
from the board and the COMMAND the host answers it with (BoardLink). The UART is full duplex, so the
wire limit is the longer of the two frames at 10 bits per byte; the board is configured to stream STATE
at that limit (at most the emulator's 1000 Hz) and the host answers every STATE.

Each figure: round trip p50/p99 (Dynamixel: the write + read cycle; board: COMMAND written -> first STATE
applying it, BoardLink's own measure) and the sustained cycle rate as a ratio to the wire limit. The
emulators run in their own processes, so the host side here is timed as a driver would run it.
"""

from __future__ import annotations

import math
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from hardware import dynamixel_table as dt
from hardware.pty_port import BITS_PER_BYTE

RETURN_DELAY_US = 500  # X-series factory default, what `s2r hil` emulates
CONFIG_DIR = Path(__file__).resolve().parents[1] / "ros_ws" / "src" / "s2r_ros" / "config"
START_S = 60.0


def _emulator(module: str, *args: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stderr is not None
    line = proc.stdout.readline()
    found = re.search(r" on (/dev/\S+)", line)
    if not found:
        proc.kill()
        raise RuntimeError(f"{module} printed no pty path: {line!r} {proc.stderr.read()[-2000:]}")
    return proc, found.group(1)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _pct_ms(samples_s: list[float]) -> tuple[float, float]:
    a = np.asarray(samples_s) * 1e3
    return (float(np.percentile(a, 50)), float(np.percentile(a, 99))) if a.size else (math.nan, math.nan)


def dynamixel_cycle_bytes(n: int) -> dict:
    """Wire bytes of one cycle on n servos (no byte stuffing assumed: goal and state values rarely hold FF FF FD)."""
    from hardware.dynamixel_emulator import INST_STATUS, INST_SYNC_READ, INST_SYNC_WRITE, frame

    write = frame(0xFE, bytes([INST_SYNC_WRITE]) + bytes(4) + bytes(n * (1 + dt.GOAL_POSITION.size)))
    read = frame(0xFE, bytes([INST_SYNC_READ]) + bytes(4) + bytes(n))
    status = frame(1, bytes([INST_STATUS, 0]) + bytes(dt.PRESENT_STATE_SIZE))
    return {
        "sync_write": len(write),
        "sync_read": len(read),
        "status": len(status),
        "total": len(write) + len(read) + n * len(status),
    }


def bench_dynamixel(baud: int, seconds: float = 3.0, robot: str = "open_manipulator_x") -> dict:
    from hardware.dynamixel_bus import BusError, DynamixelBus
    from hardware.serial_config import DynamixelSerialCfg, load_hardware_serial

    hw = load_hardware_serial(CONFIG_DIR / f"{robot}.yaml")
    if not isinstance(hw.serial, DynamixelSerialCfg):
        raise ValueError(f"{hw.source}: robot '{robot}' has no Dynamixel serial section")
    servos = hw.serial.servos()
    n = len(servos)
    ids = [str(s.id) for s in servos.values()]
    proc, port = _emulator(
        "hardware.dynamixel_emulator",
        "--ids",
        *ids,
        "--baud",
        str(baud),
        "--return-delay-us",
        str(RETURN_DELAY_US),
        "--command-timeout-s",
        "10",
    )
    try:
        bus = DynamixelBus(port, baud, servos, usb_latency_s=0.05)
        bus.open()
        try:
            goal = bus.read_state().position_rad
            cycles, failures = [], 0
            start = time.perf_counter()
            while time.perf_counter() - start < seconds:
                t0 = time.perf_counter()
                try:
                    bus.write_goal(goal)
                    bus.read_state()
                except BusError:
                    failures += 1
                    continue
                cycles.append(time.perf_counter() - t0)
            elapsed = time.perf_counter() - start
            bus.torque_off()
        finally:
            bus.close()
    finally:
        _stop(proc)
    wire = dynamixel_cycle_bytes(n)
    wire_s = wire["total"] * BITS_PER_BYTE / baud + n * RETURN_DELAY_US * 1e-6
    p50, p99 = _pct_ms(cycles)
    rate = len(cycles) / elapsed
    return {
        "link": "dynamixel",
        "robot": robot,
        "servos": n,
        "baud": baud,
        "cycles": len(cycles),
        "failures": failures,
        "rtt_p50_ms": p50,
        "rtt_p99_ms": p99,
        "rate_hz": rate,
        "wire_bytes_per_cycle": wire["total"],
        "wire_limit_hz": 1.0 / wire_s,
        "ratio_to_wire_limit": rate * wire_s,
    }


def bench_board(baud: int, seconds: float = 3.0, robot: str = "quadruped") -> dict:
    from hardware.board_link import BoardLink
    from hardware.frames import encode_frame
    from hardware.messages import Command, CommandMode
    from hardware.serial_config import load_hardware_serial, state_wire_bytes

    hw = load_hardware_serial(CONFIG_DIR / f"{robot}.yaml")
    n = len(hw.robot.actuator_names)
    if hw.robot.joints is None:
        raise ValueError(f"{hw.source}: robot '{robot}' has no joints")
    default = tuple(hw.robot.joints.default_pos_rad)
    command = Command(mode=CommandMode.POSITION, targets=default, kp_Nm_per_rad=(20.0,) * n, kd_Nms_per_rad=(0.5,) * n)
    state_bytes = state_wire_bytes(n, imu=True)
    command_bytes = len(encode_frame(command.encode()))
    limit_hz = baud / (BITS_PER_BYTE * max(state_bytes, command_bytes))
    rate_hz = int(min(math.floor(limit_hz), 1000))  # the emulator streams at most 1000 Hz
    proc, port = _emulator("hardware.board_emulator", "--actuators", str(n), "--imu", "--baud", str(baud))
    try:
        link = BoardLink(port, baud, n, 1000, rate_hz, answer_timeout_s=10.0, board_gone_s=5.0)
        link.open()
        try:
            states = 0
            end = time.perf_counter() + 0.5  # warm up: the stream starts
            while time.perf_counter() < end:
                if link.poll() is not None:
                    link.send_command(command)
                time.sleep(0.0002)
            first = link.counters
            start = time.perf_counter()
            while time.perf_counter() - start < seconds:
                if link.poll() is not None:
                    states += 1
                    link.send_command(command)
                else:
                    time.sleep(0.0002)
            elapsed = time.perf_counter() - start
            c = link.counters
        finally:
            link.close()
    finally:
        _stop(proc)
    measured_hz = (c.frames_in - first.frames_in) / elapsed  # every STATE, even two read at once
    return {
        "link": "motor_board",
        "robot": robot,
        "actuators": n,
        "baud": baud,
        "configured_rate_hz": rate_hz,
        "rtt_p50_ms": c.rtt_p50_ms,
        "rtt_p99_ms": c.rtt_p99_ms,
        "rate_hz": measured_hz,
        "polls_with_state": states,
        "state_bytes": state_bytes,
        "command_bytes": command_bytes,
        "wire_limit_hz": limit_hz,
        "ratio_to_wire_limit": measured_hz / limit_hz,
        "ratio_to_configured_rate": measured_hz / rate_hz,
        "crc_errors": c.crc_errors,
        "lost": c.lost,
    }


def bench_serial(bauds: tuple[int, ...] = (1_000_000, 4_000_000), seconds: float = 3.0) -> dict:
    out = {"dynamixel": {}, "motor_board": {}}
    for baud in bauds:
        out["dynamixel"][str(baud)] = bench_dynamixel(baud, seconds)
        out["motor_board"][str(baud)] = bench_board(baud, seconds)
    return out
