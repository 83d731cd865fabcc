"""The motor-board link through real pseudo-terminals: BoardLink (host) against BoardEmulator (board).

The machine running these may be loaded: every wait is generous (seconds), the link is told the board is
gone only after 2 s of silence, and nothing asserts on time. A link opened the moment its emulator starts
may find the board's boot HEARTBEAT as noise in the port (sent while pyserial had not yet set the baud
rate), which hides the first CONFIG echo: the link retries, so CONFIG counts are asserted as "at least".
"""

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial

from hardware.board_emulator import BoardEmulator, BoardEmulatorCfg, LagBoardPlant, point_link
from hardware.board_link import BoardLink, LinkError
from hardware.frames import FrameDecoder, encode_frame
from hardware.messages import (
    Command,
    CommandMode,
    DeviceStatus,
    ErrorCode,
    ErrorReport,
    State,
    StateFlags,
    decode_message,
)

BAUD = 1_000_000
N = 3
RATE_HZ = 200
WAIT_S = 10.0  # the longest any condition is awaited
REPO = Path(__file__).resolve().parents[1]
TORQUES = (0.5, -0.5, 1.0)  # exact in float32: TORQUE mode reports them back as effort


def link_for(port: str, actuators: int = N, timeout_ms: int = 1000, baud: int = BAUD, **kw) -> BoardLink:
    kw.setdefault("answer_timeout_s", 5.0)
    kw.setdefault("board_gone_s", 2.0)
    return BoardLink(port, baud, actuators, timeout_ms, RATE_HZ, **kw)


def position(targets: tuple[float, ...]) -> Command:
    n = len(targets)
    return Command(mode=CommandMode.POSITION, targets=targets, kp_Nm_per_rad=(20.0,) * n, kd_Nms_per_rad=(0.5,) * n)


TORQUE = Command(mode=CommandMode.TORQUE, targets=TORQUES)


def pump(link: BoardLink, until, command: Command | None = None, timeout_s: float = WAIT_S) -> State | None:
    """Poll (sending `command` every round) until `until(newest STATE or None)` holds; returns that STATE."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if command is not None:
            link.send_command(command)
        state = link.poll()
        if until(state):
            return state
        time.sleep(0.005)
    pytest.fail(f"not reached within {timeout_s} s; link counters {link.counters}")


def wait_until(condition, timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"not reached within {timeout_s} s")
        time.sleep(0.01)


def status_is(status: DeviceStatus):
    return lambda s: s is not None and s.status == status


@pytest.fixture
def emu():
    with BoardEmulator(LagBoardPlant(N, with_imu=True), BoardEmulatorCfg(baud=BAUD)) as e:
        yield e


def test_commands_move_the_plant_and_state_reflects_it(emu):
    with link_for(emu.port) as link:
        assert link.is_up and emu.counters.configs_accepted >= 1  # a retry if noise from before open() hid the echo
        targets = (0.5, -0.25, 1.0)
        state = pump(
            link,
            lambda s: s is not None and max(abs(p - t) for p, t in zip(s.position_rad, targets, strict=True)) < 1e-3,
            command=position(targets),
        )
        assert state.status == DeviceStatus.ACTIVE and state.flags & StateFlags.MOTOR_POWER
        assert state.imu is not None and state.imu.accel_m_s2[2] == pytest.approx(9.81)
        assert state.bus_voltage_mv == 24_000
        c = link.counters
        assert c.rtt_samples > 0 and 0 < c.rtt_p50_ms <= c.rtt_p99_ms
        assert c.crc_errors == c.lost == c.reconnects == 0  # (a framing error: noise in the port from before open())
        assert emu.counters.commands_applied > 0 and emu.counters.stale_messages == 0


def test_wrong_actuator_count_is_rejected_naming_both_counts(emu):
    expected = r"rejected CONFIG \(12 actuators.*ACTUATOR_COUNT_MISMATCH.*12 actuators; this board drives 3"
    with pytest.raises(LinkError, match=expected):
        link_for(emu.port, actuators=12).open()
    assert emu.counters.configs_rejected >= 1 and emu.status == DeviceStatus.IDLE
    with link_for(emu.port) as link:  # the failed open let go of the port
        assert link.is_up


def test_command_timeout_turns_outputs_off_until_the_next_command(emu):
    with link_for(emu.port, timeout_ms=150) as link:
        state = pump(link, lambda s: s is not None and s.effort_Nm == TORQUES, command=TORQUE)
        assert state.status == DeviceStatus.ACTIVE
        state = pump(link, status_is(DeviceStatus.TIMED_OUT))  # commands stop; the board's watchdog acts
        assert state.effort_Nm == (0.0,) * N
        assert link.last_board_error.code == ErrorCode.COMMAND_TIMEOUT and emu.counters.timeouts == 1
        state = pump(link, lambda s: s is not None and s.effort_Nm == TORQUES, command=TORQUE)
        assert state.status == DeviceStatus.ACTIVE


def test_estop_latches_until_the_board_is_reset(emu):
    with link_for(emu.port) as link:
        pump(link, status_is(DeviceStatus.ACTIVE), command=TORQUE)
        link.estop()
        state = pump(link, status_is(DeviceStatus.ESTOPPED))
        assert not state.flags & StateFlags.MOTOR_POWER and state.effort_Nm == (0.0,) * N
        refused = emu.counters.commands_refused
        state = pump(link, lambda s: s is not None and emu.counters.commands_refused > refused + 5, command=TORQUE)
        assert state.status == DeviceStatus.ESTOPPED and state.effort_Nm == (0.0,) * N
        assert link.last_board_error.code == ErrorCode.ESTOPPED and emu.counters.estops >= 3
        emu.reset()  # the reset button: the link sees IDLE where the board ran, and configures it again
        state = pump(link, lambda s: s is not None and s.effort_Nm == TORQUES, command=TORQUE)
        assert state.status == DeviceStatus.ACTIVE and link.counters.board_resets == 1


def test_corrupted_and_lost_bytes_are_counted_not_raised(emu):
    with link_for(emu.port) as link:
        emu.set_output_faults(flip_fraction=0.01, drop_fraction=0.01)
        states = []

        def enough(state):
            if state is not None:
                states.append(state)
            c = link.counters
            return len(states) >= 20 and c.crc_errors > 0 and c.framing_errors > 0 and c.lost > 0

        pump(link, enough, command=position((0.1, 0.2, 0.3)))
        assert all(s.status == DeviceStatus.ACTIVE and len(s.position_rad) == N for s in states[-5:])
        e = emu.counters
        assert e.flipped_bytes > 0 and e.dropped_bytes > 0


def test_a_silent_board_is_counted_gone_and_back(emu):
    with link_for(emu.port, board_gone_s=0.3) as link:
        pump(link, status_is(DeviceStatus.ACTIVE), command=TORQUE)
        emu.set_silent(True)  # a cut TX line: the board still hears the commands and keeps running
        pump(link, lambda s: not link.is_up, command=TORQUE)
        assert link.counters.timeouts >= 1 and emu.status == DeviceStatus.ACTIVE
        emu.set_silent(False)
        pump(link, lambda s: s is not None and link.is_up, command=TORQUE)
        assert link.counters.lost > 0  # the board counted the messages it could not send


def test_missing_and_held_ports_name_the_cause(emu, tmp_path):
    missing = tmp_path / "ttyUSB9"
    with pytest.raises(LinkError, match=f"cannot open {missing}: no such port"):
        link_for(str(missing)).open()
    with serial.Serial(emu.port, BAUD, exclusive=True):
        with pytest.raises(LinkError, match=f"cannot open {emu.port}: held by another process"):
            link_for(emu.port).open()
    with link_for(emu.port) as link:
        assert link.is_up


def test_no_answer_says_what_to_check(emu):
    emu.set_silent(True)  # a cut TX line: the board hears (and accepts) the CONFIG, the host hears nothing
    expected = r"no answer to CONFIG .* within 0.5 s \(nothing arrived\)\. Check that 1000000 baud .* powered"
    with pytest.raises(LinkError, match=expected):
        link_for(emu.port, answer_timeout_s=0.5).open()
    emu.set_silent(False)
    accepted = emu.counters.configs_accepted
    with pytest.raises(LinkError, match=r"bytes kept arriving but made no valid frame: most likely the baud rate"):
        link_for(emu.port, baud=115_200, answer_timeout_s=1.0).open()
    assert emu.counters.baud_mismatch_bytes > 0 and emu.counters.configs_accepted == accepted


def test_reconnects_through_a_symlink_when_the_board_comes_back(tmp_path):
    board = BoardEmulator(LagBoardPlant(N), BoardEmulatorCfg(baud=BAUD))
    path = tmp_path / "board"
    point_link(path, board.start())
    try:
        with link_for(str(path)) as link:
            pump(link, status_is(DeviceStatus.ACTIVE), command=TORQUE)
            board.stop()  # the port disappears under the open link
            pump(link, lambda s: not link.is_up, command=TORQUE)
            assert not link.is_up and link.last_port_error
            point_link(path, board.start())  # a new pty path; the link reopens the symlink
            pump(link, lambda s: link.is_up)
            pump(link, lambda s: s is not None and s.effort_Nm == TORQUES, command=TORQUE)
            c = link.counters
            assert c.reconnects == 1 and c.board_resets == 0
    finally:
        board.stop()


def _start_board_process(path: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "hardware.board_emulator", "--actuators", str(N), "--link", str(path)]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # printed once the pty and the symlink are ready
    assert f"board with {N} actuators" in line, line
    return proc


def test_reconnects_after_the_board_process_is_killed(tmp_path):
    path = tmp_path / "board"
    proc = _start_board_process(path)
    try:
        with link_for(str(path)) as link:
            pump(link, status_is(DeviceStatus.ACTIVE), command=TORQUE)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            pump(link, lambda s: not link.is_up, command=TORQUE)
            proc = _start_board_process(path)
            pump(link, lambda s: s is not None and s.status == DeviceStatus.ACTIVE, command=TORQUE)
            assert link.counters.reconnects == 1
    finally:
        proc.kill()
        proc.wait()


def test_board_answers_unusable_frames_and_obeys_an_estop_of_any_version(emu):
    decoder = FrameDecoder()
    codes: list[ErrorCode] = []

    with serial.Serial(emu.port, BAUD, timeout=0.1) as port:

        def answered(payload: bytes, code: ErrorCode) -> bool:
            """Send `payload` (again: noise from before the port was set up may hide an answer) and read."""
            port.write(b"\x00" + encode_frame(payload))
            messages = map(decode_message, decoder.feed(port.read(4096)))
            codes.extend(m.code for m in messages if isinstance(m, ErrorReport))
            return code in codes

        v2_heartbeat = bytes([2, 1, 0, 0, 0, 0, 0, 0, 0])
        wait_until(lambda: answered(v2_heartbeat, ErrorCode.UNSUPPORTED_VERSION))
        wait_until(lambda: answered(bytes([1, 9, 1, 0, 0, 0, 0, 0]), ErrorCode.UNKNOWN_TYPE))
        port.write(encode_frame(bytes([7, 4, 2, 0, 0, 0, 0, 0])))  # an ESTOP in version 7
        wait_until(lambda: emu.status == DeviceStatus.ESTOPPED)
    assert emu.counters.bad_messages >= 2 and emu.counters.estops == 1
