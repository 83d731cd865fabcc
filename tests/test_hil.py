"""`s2r hil` as a user runs it: the MuJoCo robot behind its electronics on a pty, driven by our own hosts
(DynamixelBus for the arm's servos, BoardLink for the quadruped's motor board), `s2r hw scan` on it,
and the serial section's checks.

The machine running these may be loaded: every wait is generous (seconds), a failed read is retried,
and nothing asserts on time.
"""

import queue
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest

from config.validate import ConfigError
from hardware.board_link import BoardLink
from hardware.dynamixel_bus import BusError, DynamixelBus
from hardware.hil import find_hardware_config
from hardware.messages import Command, CommandMode, DeviceStatus
from hardware.serial_config import load_hardware_serial

REPO = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO / "ros_ws" / "src" / "s2r_ros" / "config"
START_S = 300.0  # the longest `s2r hil` may take to print its pty (imports and model build, on a loaded machine)
WAIT_S = 30.0  # the longest a motion or status is awaited
USB_LATENCY_S = 0.05  # DynamixelBus awaits an answer 2 x this + 2 ms beyond its wire time


def s2r(*args, timeout_s: float = 600.0):
    return subprocess.run(
        [sys.executable, "-m", "s2r.cli", *args], capture_output=True, text=True, cwd=REPO, timeout=timeout_s
    )


@contextmanager
def hil(*args):
    """`s2r hil ARGS` running; yields its pty path (its first line of output)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "s2r.cli", "hil", "--report-s", "0", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout], daemon=True).start()
    try:
        try:
            port = lines.get(timeout=START_S).strip()
        except queue.Empty:
            port = ""
        if not port.startswith("/dev/"):
            proc.kill()
            pytest.fail(f"s2r hil {' '.join(args)} printed no pty path: {port!r}\n{proc.communicate()[1][-3000:]}")
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, proc.stderr.read()[-3000:]


@pytest.fixture(scope="module")
def arm_port():
    with hil("--robot", "open_manipulator_x") as port:
        yield port


def read_state(bus: DynamixelBus):
    """A state read, retried: on a loaded machine an answer may come too late for the SDK's timeout."""
    for _ in range(20):
        try:
            return bus.read_state()
        except BusError:
            time.sleep(0.05)
    return bus.read_state()


def test_dynamixel_bus_drives_the_mujoco_arm(arm_port):
    hw = load_hardware_serial(CONFIG_DIR / "open_manipulator_x.yaml")
    default = np.array(hw.robot.joints.default_pos_rad)
    bus = DynamixelBus(arm_port, hw.serial.baud, hw.serial.servos(), usb_latency_s=USB_LATENCY_S)
    bus.open()  # checks every servo, holds the present pose, torque on: physics starts
    try:
        start = read_state(bus)
        np.testing.assert_allclose(start.position_rad, default, atol=0.03)  # ticks are 1.5 mrad; the servos hold it
        goal = default + np.array([0.4, 0.3, -0.3, 0.3])
        deadline = time.monotonic() + WAIT_S
        state = start
        while time.monotonic() < deadline and np.abs(state.position_rad - goal).max() > 0.05:
            bus.write_goal(goal)  # as a control loop would, so the firmware's command timeout never trips
            time.sleep(0.02)
            state = read_state(bus)
        np.testing.assert_allclose(state.position_rad, goal, atol=0.05)  # a P servo under gravity keeps a small error
        assert abs(state.current_A[1]) > 0.01  # joint2 holds the arm up: current from the MuJoCo joint torque
        bus.torque_off()
    finally:
        bus.close()


def test_motor_board_drives_the_mujoco_quadruped(tmp_path):
    hw = load_hardware_serial(CONFIG_DIR / "quadruped.yaml")
    default = np.array(hw.robot.joints.default_pos_rad)
    n = len(default)
    link_path = tmp_path / "board"
    with hil("--robot", "quadruped", "--link", str(link_path)) as port:
        assert link_path.resolve() == Path(port).resolve()
        # the YAML's baud and rate; a command timeout far above its 100 ms, for a loaded test machine
        link = BoardLink(
            str(link_path), hw.serial.baud, n, 1000, hw.serial.control_rate_hz, answer_timeout_s=10.0, board_gone_s=5.0
        )
        link.open()
        try:
            state = pump(link, lambda s: s is not None)
            np.testing.assert_allclose(state.position_rad, default, atol=1e-5)  # at rest where placed, until a COMMAND
            np.testing.assert_allclose(state.imu.quat_wxyz, (1, 0, 0, 0), atol=1e-6)
            np.testing.assert_allclose(state.imu.accel_m_s2, (0, 0, 9.81), atol=1e-3)  # go1.xml has no accelerometer
            step = np.array([0.0, 0.3, -0.3] * 4)  # crouch: thighs forward, knees bent
            crouch = Command(
                mode=CommandMode.POSITION,
                targets=tuple(default + step),
                kp_Nm_per_rad=(20.0,) * n,
                kd_Nms_per_rad=(0.5,) * n,
            )
            moved = step != 0

            def crouched(s):
                if s is None or s.status != DeviceStatus.ACTIVE:
                    return False
                delta = np.array(s.position_rad) - default
                return bool(
                    np.all(np.sign(delta[moved]) == np.sign(step[moved])) and np.all(np.abs(delta[moved]) > 0.15)
                )

            state = pump(link, crouched, command=crouch)
            assert crouched(state), (
                f"joints {np.round(np.array(state.position_rad) - default, 3)} from the default pose"
            )
            assert np.abs(state.effort_Nm).max() > 1.0  # the drives carry the body: torques from MuJoCo
            w, x, y, z = state.imu.quat_wxyz
            assert w > 0.98  # it crouches on its four feet, about level
            # no more COMMANDs: the board's own timeout turns the outputs off (TIMED_OUT; IDLE, also unpowered,
            # once the link has configured it again, as it may after a stall on a loaded machine)
            state = pump(link, lambda s: s is not None and s.status in (DeviceStatus.TIMED_OUT, DeviceStatus.IDLE))
            assert state.status in (DeviceStatus.TIMED_OUT, DeviceStatus.IDLE)
            state = pump(link, lambda s: s is not None and np.abs(s.effort_Nm).max() < 0.5)
            assert np.abs(state.effort_Nm).max() < 0.5  # no drive torque: the outputs are off
        finally:
            link.close()
    assert not link_path.exists()  # the link goes with the emulator


def pump(link: BoardLink, until, command: Command | None = None):
    """Poll the link (sending `command` every round) until `until(newest STATE)` holds or WAIT_S pass."""
    deadline = time.monotonic() + WAIT_S
    newest = None
    while time.monotonic() < deadline:
        if command is not None:
            link.send_command(command)
        newest = link.poll() or newest
        if until(newest):
            break
        time.sleep(0.02)
    return newest


def test_hw_scan_names_the_ids_and_baud(arm_port):
    for _ in range(3):  # a loaded machine may answer a broadcast ping too late for the scan's window
        r = s2r("hw", "scan", "--port", arm_port, "--ids", "0-20", "--bauds", "57600", "1000000")
        assert r.returncode == 0, r.stderr
        if "IDs 11-14 answer at 1000000 baud" in r.stdout.splitlines():
            return
    pytest.fail(f"s2r hw scan said:\n{r.stdout}")


def test_hw_scan_of_a_missing_port_says_so():
    r = s2r("hw", "scan", "--port", "/dev/no-such-port")
    assert r.returncode == 2 and "/dev/no-such-port" in r.stderr and "Traceback" not in r.stderr


def test_a_serial_section_naming_a_joint_the_robot_lacks_is_refused(tmp_path):
    good = (CONFIG_DIR / "open_manipulator_x.yaml").read_text()
    bad = tmp_path / "arm.yaml"
    bad.write_text(good.replace("joint4: {id: 14", "joint5: {id: 14"))
    with pytest.raises(ConfigError) as e:
        load_hardware_serial(bad)
    assert "serial.joints.joint5: robot 'open_manipulator_x' has no joint 'joint5'" in str(e.value)
    assert "serial.joints.joint4: missing" in str(e.value)
    r = s2r("hil", "--robot", str(bad))
    assert r.returncode == 2 and "joint5" in r.stderr and "Traceback" not in r.stderr


def test_serial_sections_are_checked_field_by_field(tmp_path):
    text = (CONFIG_DIR / "quadruped.yaml").read_text()
    cases = {
        "serial.baud: 115200 baud cannot carry STATE for 12 actuators at 200 Hz": text.replace(
            "baud: 1000000", "baud: 115200"
        ),
        "serial.command_timeout_ms: must be in 1..65535, got 0": text.replace(
            "command_timeout_ms: 100", "command_timeout_ms: 0"
        ),
        "serial.bus: 'can' is not one of": text.replace("bus: motor_board", "bus: can"),
        "serial.joints: missing": text.replace("bus: motor_board", "bus: dynamixel"),
    }
    for expected, yaml_text in cases.items():
        path = tmp_path / "quadruped.yaml"
        path.write_text(yaml_text)
        with pytest.raises(ConfigError, match=expected.replace("(", r"\(")):
            load_hardware_serial(path)
    arm = (CONFIG_DIR / "open_manipulator_x.yaml").read_text()
    (tmp_path / "arm.yaml").write_text(arm.replace("{id: 12, offset_rad: 0.0, direction: 1}", "{id: 11, direction: 2}"))
    with pytest.raises(ConfigError) as e:
        load_hardware_serial(tmp_path / "arm.yaml")
    assert "serial.joints.joint2.direction: must be +1 or -1, got 2" in str(e.value)
    assert "serial.joints: ID 11 is given to joint1, joint2" in str(e.value)


def test_hil_finds_a_hardware_config_by_its_name_or_its_robot():
    assert find_hardware_config("quadruped") == find_hardware_config("go1") == CONFIG_DIR / "quadruped.yaml"
    with pytest.raises(ConfigError, match="none is 'go7'"):
        find_hardware_config("go7")
