"""What the motor-board protocol costs in Python: encode + decode of the quadruped's STATE.

The host decodes one STATE per control period and the HIL emulator encodes one, so frames/s here
bounds the control rate the Python side of the link can carry on this machine. Each frame is fed to
the decoder as its own chunk, as a serial read at the control rate returns it (the costly case).
"""

from __future__ import annotations

import math
import time

from hardware.frames import FrameDecoder, encode_frame
from hardware.messages import SEQ_MODULUS, TIME_MODULUS, DeviceStatus, Imu, State, StateFlags, decode_message
from hardware.pty_port import BITS_PER_BYTE

QUADRUPED_ACTUATORS = 12


def _states(count: int, actuator_count: int) -> list[State]:
    imu = Imu(quat_wxyz=(1.0, 0.0, 0.0, 0.0), gyro_rad_s=(0.01, -0.02, 0.03), accel_m_s2=(0.1, -0.2, 9.81))
    return [
        State(
            seq=i % SEQ_MODULUS,
            time_us=1000 * i % TIME_MODULUS,
            status=DeviceStatus.ACTIVE,
            flags=StateFlags.MOTOR_POWER,
            command_seq=(i - 1) % SEQ_MODULUS,
            bus_voltage_mv=24000,
            position_rad=tuple(math.sin(0.01 * i + j) for j in range(actuator_count)),
            velocity_rad_s=tuple(math.cos(0.01 * i + j) for j in range(actuator_count)),
            effort_Nm=tuple(0.1 * j for j in range(actuator_count)),
            imu=imu,
        )  # fmt: skip
        for i in range(count)
    ]


def bench_state_roundtrip(frames: int = 20000, actuator_count: int = QUADRUPED_ACTUATORS) -> dict:
    """Encode `frames` STATE messages to wire bytes, then decode them back; per-frame costs and rate."""
    states = _states(frames, actuator_count)
    t0 = time.perf_counter()
    wire = [encode_frame(s.encode()) for s in states]
    t1 = time.perf_counter()
    decoder = FrameDecoder()
    decoded = [decode_message(p) for chunk in wire for p in decoder.feed(chunk)]
    t2 = time.perf_counter()
    if len(decoded) != frames:
        raise RuntimeError(f"round trip lost frames: {len(decoded)} of {frames} came back ({decoder.stats})")
    wire_bytes = len(wire[0])
    return {
        "actuators": actuator_count,
        "frames": frames,
        "wire_bytes_per_frame": wire_bytes,
        "encode_us": (t1 - t0) / frames * 1e6,
        "decode_us": (t2 - t1) / frames * 1e6,
        "frames_per_s": frames / (t2 - t0),
        "baud_needed_at_1khz": wire_bytes * BITS_PER_BYTE * 1000,
    }
