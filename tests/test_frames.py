"""Motor-board protocol: framing (COBS + CRC-32), messages, sequence numbers, and a pseudo-terminal link."""

import math
import os
import random
import re
import select
import threading
import time
import tty
from pathlib import Path

import crc
import pytest
import serial

from hardware.bench_frames import bench_state_roundtrip
from hardware.frames import (
    CRC_CONFIG,
    MAX_PAYLOAD_BYTES,
    CobsError,
    CrcError,
    FrameDecoder,
    ShortFrameError,
    crc32,
    decode_frame,
    encode_frame,
    max_encoded_bytes,
)
from hardware.messages import (
    MAX_ACTUATORS,
    PROTOCOL_VERSION,
    Command,
    CommandMode,
    Config,
    ConfigStatus,
    DecodeError,
    DeviceStatus,
    ErrorCode,
    ErrorReport,
    Estop,
    Heartbeat,
    Imu,
    LengthError,
    SequenceTracker,
    State,
    StateFlags,
    UnknownTypeError,
    VersionError,
    decode_message,
)

PROTOCOL_MD = Path(__file__).resolve().parents[1] / "hardware" / "PROTOCOL.md"
IMU = Imu(quat_wxyz=(0.5, 0.5, -0.5, 0.5), gyro_rad_s=(0.125, -0.25, 1.5), accel_m_s2=(0.0, -0.5, 9.75))


def quadruped_state(seq: int = 0, imu: Imu | None = IMU) -> State:
    """Values exact in float32, so a round trip compares equal."""
    return State(
        seq=seq, time_us=1000 * seq, status=DeviceStatus.ACTIVE, flags=StateFlags.MOTOR_POWER,
        command_seq=(seq - 1) % 65536, bus_voltage_mv=24100,
        position_rad=tuple(0.125 * j - 0.75 for j in range(12)),
        velocity_rad_s=tuple(-2.0 + 0.5 * j for j in range(12)),
        effort_Nm=tuple(float(seq % 97 + j) for j in range(12)), imu=imu,
    )  # fmt: skip


ALL_MESSAGES = [
    Heartbeat(seq=0, time_us=0),
    Heartbeat(seq=65535, time_us=2**32 - 1, status=DeviceStatus.ESTOPPED),
    quadruped_state(7),
    quadruped_state(8, imu=None),
    State(
        seq=3,
        time_us=5,
        status=DeviceStatus.TIMED_OUT,
        flags=StateFlags.FAULT,
        position_rad=(1.0,) * 4,
        velocity_rad_s=(900.0,) * 4,
        effort_Nm=(2.5,) * 4,
    ),  # fmt: skip
    Command(
        seq=1,
        time_us=2,
        mode=CommandMode.POSITION,
        state_seq=9,
        targets=(0.5,) * 12,
        kp_Nm_per_rad=(20.0,) * 12,
        kd_Nms_per_rad=(0.5,) * 12,
    ),  # fmt: skip
    Command(seq=2, time_us=3, mode=CommandMode.TORQUE, targets=(-1.5, 2.25)),
    Command(seq=3, time_us=4, mode=CommandMode.THRUST, targets=(0.25, 0.5, 0.75, 1.0)),
    Estop(seq=4, time_us=99),
    Config(seq=5, actuator_count=12, command_timeout_ms=50, control_rate_hz=500),
    Config(seq=6, actuator_count=4, command_timeout_ms=20, control_rate_hz=1000, status=ConfigStatus.REJECTED),
    ErrorReport(seq=7, code=ErrorCode.COMMAND_TIMEOUT, text="no COMMAND for 50 ms"),
    ErrorReport(seq=8, code=999),
]


@pytest.mark.parametrize("msg", ALL_MESSAGES, ids=lambda m: type(m).__name__)
def test_every_message_round_trips_through_a_frame(msg):
    wire = encode_frame(msg.encode())
    assert wire.count(0) == 1 and wire[-1] == 0
    assert decode_message(decode_frame(wire[:-1])) == msg
    assert type(msg).decode(msg.encode()) == msg


def test_state_keeps_nan_for_what_the_board_cannot_measure():
    rotors = State(
        status=DeviceStatus.ACTIVE, position_rad=(math.nan,) * 4, velocity_rad_s=(800.0,) * 4, effort_Nm=(1.0,) * 4
    )
    back = decode_message(rotors.encode())
    assert all(math.isnan(x) for x in back.position_rad) and back.velocity_rad_s == (800.0,) * 4


def test_largest_message_fits_a_frame():
    n = MAX_ACTUATORS
    big = State(
        status=DeviceStatus.IDLE, position_rad=(0.0,) * n, velocity_rad_s=(0.0,) * n, effort_Nm=(0.0,) * n, imu=IMU
    )
    assert len(big.encode()) <= MAX_PAYLOAD_BYTES
    assert len(encode_frame(big.encode())) - 1 <= max_encoded_bytes(MAX_PAYLOAD_BYTES)


def test_crc_is_crc32_iso_hdlc_as_the_crc_package_defines_it():
    reference = crc.Calculator(CRC_CONFIG, optimized=True)
    assert crc32(b"123456789") == reference.checksum(b"123456789") == 0xCBF43926
    rng = random.Random(1)
    for n in (1, 7, 64, 255, 300):
        data = rng.randbytes(n)
        assert crc32(data) == reference.checksum(data)
    assert "0xCBF43926" in PROTOCOL_MD.read_text()


def test_the_documented_heartbeat_example():
    doc = PROTOCOL_MD.read_text()
    rows = {m[1]: bytes.fromhex(m[2]) for m in re.finditer(r"^(payload|on the wire) +([0-9a-f ]+)$", doc, re.M)}
    msg = Heartbeat(seq=0x1234, time_us=1_000_000, status=DeviceStatus.ACTIVE)
    assert msg.encode() == rows["payload"]
    assert encode_frame(msg.encode()) == rows["on the wire"]
    assert "0x3A5F9DF6" in doc and crc32(rows["payload"]) == 0x3A5F9DF6
    assert FrameDecoder().feed(rows["on the wire"]) == [rows["payload"]]


def test_decode_frame_names_what_is_wrong():
    wire = encode_frame(b"\x01\x02\x03")[:-1]
    with pytest.raises(CrcError, match="CRC mismatch"):
        decode_frame(wire[:-1] + bytes([wire[-1] ^ 0x40]))
    with pytest.raises(CobsError, match="COBS"):
        decode_frame(b"\x05\x01")
    with pytest.raises(ShortFrameError, match="cannot hold"):
        decode_frame(b"\x03\x01\x02")
    with pytest.raises(ValueError, match="512-byte limit"):
        encode_frame(bytes(MAX_PAYLOAD_BYTES + 1))


def test_decoding_errors_name_the_problem():
    hb = Heartbeat(seq=1).encode()
    with pytest.raises(VersionError, match=f"version 2; this side speaks version {PROTOCOL_VERSION}"):
        decode_message(bytes([2]) + hb[1:])
    with pytest.raises(UnknownTypeError, match="unknown message type 77"):
        decode_message(hb[:1] + bytes([77]) + hb[2:])
    state = quadruped_state(1).encode()
    with pytest.raises(LengthError, match="STATE of 196 bytes, expected 200 for 12 actuators with IMU"):
        decode_message(state[:-4])
    with pytest.raises(LengthError, match="COMMAND of 60 bytes, expected 156 for 12 actuators in POSITION mode"):
        decode_message(ALL_MESSAGES[5].encode()[:60])
    with pytest.raises(LengthError, match="shorter than the 8-byte header"):
        decode_message(hb[:5])
    with pytest.raises(DecodeError, match="mode = 9"):
        cmd = ALL_MESSAGES[6].encode()
        decode_message(cmd[:9] + b"\x09" + cmd[10:])
    with pytest.raises(DecodeError, match="not ASCII"):
        decode_message(ErrorReport(code=1, text="x").encode()[:-1] + b"\xff")
    with pytest.raises(DecodeError, match="expected a STATE message, got HEARTBEAT"):
        State.decode(hb)


def test_encoding_refuses_what_does_not_fit():
    with pytest.raises(ValueError, match=r"HEARTBEAT.seq = 65536 does not fit in u16"):
        Heartbeat(seq=65536).encode()
    with pytest.raises(ValueError, match="velocity_rad_s has 11 values, expected 12"):
        State(
            status=DeviceStatus.IDLE, position_rad=(0.0,) * 12, velocity_rad_s=(0.0,) * 11, effort_Nm=(0.0,) * 12
        ).encode()
    with pytest.raises(ValueError, match="needs kp_Nm_per_rad and kd_Nms_per_rad"):
        Command(mode=CommandMode.POSITION, targets=(0.0,)).encode()
    with pytest.raises(ValueError, match="TORQUE mode carries no gains"):
        Command(mode=CommandMode.TORQUE, targets=(0.0,), kp_Nm_per_rad=(1.0,)).encode()
    with pytest.raises(ValueError, match="0 actuators"):
        Config(actuator_count=0, command_timeout_ms=50, control_rate_hz=500).encode()
    with pytest.raises(ValueError, match="ASCII"):
        ErrorReport(code=1, text="überhitzt").encode()


def frames_of(count: int) -> list[bytes]:
    return [quadruped_state(i).encode() for i in range(count)]


def feed_in_chunks(decoder: FrameDecoder, stream: bytes, rng: random.Random, max_chunk: int = 300) -> list[bytes]:
    out, i = [], 0
    while i < len(stream):
        n = rng.randint(1, max_chunk)
        out += decoder.feed(stream[i : i + n])
        i += n
    return out


def test_partial_frames_across_chunk_boundaries_and_byte_by_byte():
    payloads = frames_of(50)
    stream = b"".join(encode_frame(p) for p in payloads)
    rng = random.Random(2)
    for max_chunk in (1, 7, 300, 5000):
        dec = FrameDecoder()
        assert feed_in_chunks(dec, stream, rng, max_chunk) == payloads
        assert dec.stats.frames_ok == 50 and dec.stats.bytes_discarded == 0


def test_garbage_between_frames_is_counted_and_skipped():
    rng = random.Random(3)
    payloads = frames_of(200)
    stream = b"\x00".join(rng.randbytes(rng.randint(1, 40)) + b"\x00" + encode_frame(p) for p in payloads)
    dec = FrameDecoder()
    assert feed_in_chunks(dec, stream, rng) == payloads
    st = dec.stats
    assert st.frames_ok == 200 and st.crc_errors + st.framing_errors > 0 and st.bytes_discarded > 0


def test_a_partial_frame_at_start_up_costs_only_itself():
    payloads = frames_of(3)
    stream = encode_frame(payloads[0])[40:] + encode_frame(payloads[1]) + encode_frame(payloads[2])
    dec = FrameDecoder()
    assert dec.feed(stream) == payloads[1:]
    assert dec.stats.crc_errors + dec.stats.framing_errors == 1


def test_oversize_run_without_delimiter_is_dropped_and_the_next_frame_kept():
    rng = random.Random(4)
    junk = bytes(rng.randint(1, 255) for _ in range(2000))
    payload = frames_of(1)[0]
    for max_chunk in (64, 5000):
        dec = FrameDecoder()
        assert feed_in_chunks(dec, junk + b"\x00" + encode_frame(payload), rng, max_chunk) == [payload]
        assert dec.stats.oversize_frames == 1 and dec.stats.bytes_discarded == 2000


def test_one_percent_of_bytes_corrupted_no_exception_and_nothing_wrong_passes():
    rng = random.Random(5)
    payloads = frames_of(3000)
    stream = bytearray(b"".join(encode_frame(p) for p in payloads))
    for i in rng.sample(range(len(stream)), len(stream) // 100):
        stream[i] ^= rng.randint(1, 255)
    dec = FrameDecoder()
    got = feed_in_chunks(dec, bytes(stream), rng)
    st = dec.stats
    assert st.crc_errors > 100 and st.framing_errors > 0 and len(got) == st.frames_ok > 100
    for p in got:  # every frame that passes is the one that was sent
        assert p == payloads[decode_message(p).seq]


def test_dropped_bytes_lose_exactly_the_frames_they_touch():
    rng = random.Random(6)
    payloads = frames_of(2000)
    wires = [encode_frame(p) for p in payloads]
    starts = [0]
    for w in wires:
        starts.append(starts[-1] + len(w))
    stream = b"".join(wires)
    dropped = set(rng.sample(range(len(stream)), len(stream) // 200))
    kept = bytes(b for i, b in enumerate(stream) if i not in dropped)
    # frame k survives if none of its bytes and not the previous frame's delimiter was dropped
    survivors = [
        payloads[k]
        for k in range(len(wires))
        if not any(starts[k] <= i < starts[k + 1] for i in dropped) and (k == 0 or starts[k] - 1 not in dropped)
    ]
    dec = FrameDecoder()
    assert feed_in_chunks(dec, kept, rng) == survivors
    assert dec.stats.frames_ok == len(survivors) < 2000


def test_sequence_tracker_counts_gaps_late_messages_and_wraps():
    seqs = SequenceTracker()
    assert [seqs.update(s) for s in (65533, 65534, 65535, 0, 1, 4, 5, 3, 5, 6)] == [True] * 7 + [False, False, True]
    assert (seqs.received, seqs.lost, seqs.out_of_order, seqs.last_seq) == (10, 2, 2, 6)


def test_lost_frames_show_up_as_sequence_gaps():
    rng = random.Random(7)
    payloads = frames_of(500)
    lost = set(rng.sample(range(1, 499), 20))
    dec, seqs = FrameDecoder(), SequenceTracker()
    for p in feed_in_chunks(dec, b"".join(encode_frame(p) for i, p in enumerate(payloads) if i not in lost), rng):
        seqs.update(decode_message(p).seq)
    assert (seqs.received, seqs.lost, seqs.out_of_order) == (480, 20, 0)


def echo(master_fd: int, stop: threading.Event) -> None:
    """The far end of the pseudo-terminal: writes back whatever it reads."""
    while not stop.is_set():
        if select.select([master_fd], [], [], 0.05)[0]:
            data = os.read(master_fd, 4096)
            while data:
                data = data[os.write(master_fd, data) :]


def test_round_trip_through_a_pseudo_terminal():
    master_fd, slave_fd = os.openpty()
    tty.setraw(slave_fd)
    stop = threading.Event()
    thread = threading.Thread(target=echo, args=(master_fd, stop), daemon=True)
    thread.start()
    port = serial.Serial(os.ttyname(slave_fd), baudrate=3_000_000, timeout=0.05)
    try:
        dec = FrameDecoder()
        for msg in ALL_MESSAGES:
            port.write(encode_frame(msg.encode()))
            got, deadline = [], time.monotonic() + 10.0  # a guard against a hang, not a timing check
            while not got and time.monotonic() < deadline:
                got = dec.feed(port.read(max(1, port.in_waiting)))
            assert [decode_message(p) for p in got] == [msg]
        assert dec.stats.frames_ok == len(ALL_MESSAGES) and dec.stats.bytes_discarded == 0
    finally:
        stop.set()
        thread.join()
        port.close()
        os.close(slave_fd)
        os.close(master_fd)


def test_bench_reports_the_quadruped_state_rate():
    result = bench_state_roundtrip(frames=200)
    assert result["frames"] == 200 and result["wire_bytes_per_frame"] == 206 and result["frames_per_s"] > 0
