"""s2r_ros nodes as real processes over Fast DDS on loopback: launch file contents, start-up refusals,
and faults (sensor silence, NaN, e-stop latch). The test process plays the robot's driver."""

from __future__ import annotations

import ast
import dataclasses
import os
import random
import time

import numpy as np
import pytest

rclpy = pytest.importorskip("rclpy")  # installed by setup.sh ('.[ros]'); the nodes need it

from rclpy.node import Node  # noqa: E402
from rclpy.qos import QoSPresetProfiles, ReliabilityPolicy  # noqa: E402
from s2r_ros.processes import (  # noqa: E402
    CONFIG,
    PKG,
    SHIPPED_POLICIES,
    policy_params,
    ros_env,
    start_node,
    stop,
    wait_for,
)
from sensor_msgs.msg import JointState  # noqa: E402
from std_msgs.msg import Bool, Float64MultiArray, String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from config.robot import find_robot  # noqa: E402
from deploy.onnx_policy import OnnxPolicy  # noqa: E402
from deploy.realtime import realtime_permitted  # noqa: E402
from deploy.robot_config import load_robot_config  # noqa: E402

ARM = load_robot_config(CONFIG / "arm.yaml", OnnxPolicy(PKG / "policies" / "arm.onnx").spec)


def test_launch_file_names_nodes_and_parameters_that_exist():
    import importlib

    tree = ast.parse((PKG / "launch" / "deploy.launch.py").read_text())
    setup = (PKG / "setup.py").read_text()
    executables = set()
    for call in ast.walk(tree):
        if isinstance(call, ast.Call) and getattr(call.func, "id", None) == "Node":
            exe = next(k.value.value for k in call.keywords if k.arg == "executable")
            assert f"{exe} = s2r_ros.{exe}:main" in setup, exe
            executables.add(exe)
    assert executables == {"policy_node", "sim_robot_node", "recorder_node", "serial_bridge_node"}
    # the parameters the launch file sets on policy_node: `params = {...}` and `params[...] = ...`
    launch_keys = []
    for a in ast.walk(tree):
        if isinstance(a, ast.Assign) and isinstance(a.targets[0], ast.Name) and a.targets[0].id == "params":
            launch_keys += [k.value for k in a.value.keys]
        if isinstance(a, ast.Assign) and isinstance(a.targets[0], ast.Subscript) and a.targets[0].value.id == "params":
            launch_keys.append(a.targets[0].slice.value)
    assert {"robot_config", "policy", "autostart"} <= set(launch_keys)
    nodes = {"policy_node": launch_keys, "sim_robot_node": [], "recorder_node": ["bag", "policy"]}
    robots = sorted(p.name[: -len("_nodes.yaml")] for p in CONFIG.glob("*_nodes.yaml"))  # as the launch file finds them
    assert {"quadrotor", "quadruped", "arm"} <= set(robots)
    import yaml

    for exe, keys in nodes.items():
        declared = importlib.import_module(f"s2r_ros.{exe}").PARAMETERS
        assert set(keys) <= set(declared), (exe, set(keys) - set(declared))
        for robot in robots:
            find_robot(yaml.safe_load((CONFIG / f"{robot}.yaml").read_text())["robot"])  # names a robot config
            params = (
                yaml.safe_load((CONFIG / f"{robot}_nodes.yaml").read_text()).get(exe, {}).get("ros__parameters", {})
            )
            assert set(params) - {"qos"} <= set(declared), (robot, exe, set(params) - set(declared))
            qos_topics = set(getattr(importlib.import_module(f"s2r_ros.{exe}"), "QOS", {}))
            assert set(params.get("qos", {})) <= qos_topics | {"joint_commands", "motor_thrust"}, (robot, exe)


@pytest.fixture(scope="module")
def arm_policy(tmp_path_factory):
    from policies.export import export_checkpoint
    from policies.runner import Runner, default_train_cfg
    from sim.tasks import default_cfg

    run = tmp_path_factory.mktemp("arm")
    cfg = dataclasses.replace(default_train_cfg("arm-reach"), num_envs=16, max_iterations=1, save_interval=1000)
    runner = Runner(cfg, default_cfg("arm-reach"), run)
    ckpt = runner.learn(progress=False)
    runner.env.close()
    return export_checkpoint(ckpt)[0]


@pytest.fixture(scope="module")
def ros(request):
    domain = random.randint(1, 200)
    import os

    os.environ.update({k: v for k, v in ros_env(domain).items() if k.startswith(("ROS_", "RMW_"))})
    rclpy.init()
    node = Node("test_driver")
    yield node, domain
    node.destroy_node()
    rclpy.shutdown()


class Driver:
    """The robot's driver, as the test plays it: publishes joint_states, records joint_commands, both with `qos`
    (default: the sensor-data profile, best effort)."""

    def __init__(self, node: Node, qos=QoSPresetProfiles.SENSOR_DATA.value):
        self.node = node
        self.pub = node.create_publisher(JointState, "joint_states", qos)
        self.estop = node.create_publisher(Bool, "estop", 10)
        self.commands: list[tuple[float, np.ndarray]] = []
        self.modes: list[str] = []
        self._subs = [
            node.create_subscription(
                Float64MultiArray,
                "joint_commands",
                lambda m: self.commands.append((time.monotonic(), np.array(m.data))),
                qos,
            ),
            node.create_subscription(String, "policy_node/mode", lambda m: self.modes.append(m.data), 10),
        ]
        self.q = np.asarray(ARM.default_pos_rad)

    def publish(self, q=None):
        msg = JointState()
        msg.name = list(ARM.actuators)
        msg.position = [float(x) for x in (self.q if q is None else q)]
        msg.velocity = [0.0] * len(ARM.actuators)
        self.pub.publish(msg)

    def run(self, seconds: float, q=None, hz: float = 100.0):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            self.publish(q)
            rclpy.spin_once(self.node, timeout_sec=1.0 / hz)

    def spin(self, seconds: float):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            rclpy.spin_once(self.node, timeout_sec=0.005)

    def kp_scale(self, data: np.ndarray) -> float:
        return float(data[len(ARM.actuators)])

    def call(self, name: str) -> Trigger.Response:
        client = self.node.create_client(Trigger, f"policy_node/{name}")
        assert client.wait_for_service(timeout_sec=10)
        future = client.call_async(Trigger.Request())
        end = time.monotonic() + 10
        while not future.done() and time.monotonic() < end:  # the driver keeps streaming meanwhile
            self.publish()
            rclpy.spin_once(self.node, timeout_sec=0.01)
        self.node.destroy_client(client)
        return future.result()

    def close(self):
        for s in self._subs:
            self.node.destroy_subscription(s)
        self.node.destroy_publisher(self.pub)
        self.node.destroy_publisher(self.estop)


def wait_running(driver, proc, tmp_path, timeout_s: float) -> None:
    """Until policy_node (autostart) reports mode running against the driver; it must not have exited."""
    wait_for(
        lambda: "running" in driver.modes or proc.poll() is not None,
        timeout_s,
        spin=lambda: driver.run(0.05),
        what="mode running",
    )
    assert proc.poll() is None, (tmp_path / "policy_node.log").read_text()


@pytest.fixture
def running(ros, tmp_path, arm_policy):
    """policy_node for the arm, running (autostart) against the test's driver."""
    node, domain = ros
    driver = Driver(node)
    proc = start_node("policy_node", "arm", tmp_path, domain, policy_params("arm", arm_policy, trigger="timer"))
    try:
        wait_running(driver, proc, tmp_path, 30)
        yield driver
    finally:
        stop(proc)
        driver.close()


@pytest.mark.slow
def test_sensor_silence_damps_within_the_watchdog_and_estop_latches(running):
    driver = running
    driver.run(0.5)
    assert driver.kp_scale(driver.commands[-1][1]) == 1.0  # running: the drive's own gains
    # the driver goes silent: damping (kp 0, kd from the config) within the watchdog time
    t_silent = time.monotonic()
    driver.commands.clear()
    wait_for(
        lambda: any(driver.kp_scale(c) == 0.0 for _, c in driver.commands),
        2.0,
        spin=lambda: driver.spin(0.01),
        what="damping",
    )
    t_damp = next(t for t, c in driver.commands if driver.kp_scale(c) == 0.0)
    watchdog_s = ARM.watchdog_periods / ARM.control_hz
    assert t_damp - t_silent <= watchdog_s + 2 / ARM.control_hz + 0.02, t_damp - t_silent
    damp = next(c for _, c in driver.commands if driver.kp_scale(c) == 0.0)
    np.testing.assert_allclose(damp[12:], ARM.damping_kd_Nms_per_rad)
    driver.spin(0.1)
    assert "damping" in driver.modes
    # reset with fresh sensors, arm, start; then e-stop latches through fresh sensors
    driver.run(0.2)
    assert driver.call("reset").success
    assert driver.call("arm").success and driver.call("start").success
    wait_for(lambda: driver.modes[-1] == "running", 10, spin=lambda: driver.run(0.05), what="running again")
    driver.estop.publish(Bool(data=True))
    driver.run(0.5)
    assert driver.modes[-1] == "estop"
    assert all(driver.kp_scale(c) == 0.0 for _, c in driver.commands[-10:])
    refused = driver.call("arm")
    assert not refused.success and "estop" in refused.message
    assert driver.call("reset").success  # the explicit reset releases it, to idle
    driver.run(0.2)
    assert driver.modes[-1] == "idle"


@pytest.mark.slow
def test_nan_in_a_sensor_message_goes_to_the_safe_state(running, tmp_path):
    driver = running
    q = driver.q.copy()
    q[2] = np.nan
    driver.run(0.3, q=q)
    assert driver.modes[-1] == "damping"
    assert driver.kp_scale(driver.commands[-1][1]) == 0.0
    log = (tmp_path / "policy_node.log").read_text()
    assert "elbow_joint" in log and "nan" in log, log


def test_wrong_policy_or_mismatched_joints_refuse_to_start(ros, tmp_path, arm_policy):
    node, domain = ros
    driver = Driver(node)
    try:
        # a quadruped config with the arm's policy: named mismatch, exit code 2, no command sent
        proc = start_node("policy_node", "quadruped", tmp_path, domain, policy_params("quadruped", arm_policy))
        assert proc.wait(timeout=60) == 2
        log = (tmp_path / "policy_node.log").read_text()
        assert "refusing to start" in log and "robot: robot is 'go1', policy was trained for 'ur5e'" in log, log
        # not an ONNX file
        bad = tmp_path / "bad.onnx"
        bad.write_bytes(b"not a network")
        proc = start_node("policy_node", "arm", tmp_path, domain, policy_params("arm", bad))
        assert proc.wait(timeout=60) == 2
        assert "is not a readable ONNX file" in (tmp_path / "policy_node.log").read_text()
        driver.spin(0.2)
        assert driver.commands == []
    finally:
        driver.close()


def test_a_ros2_control_style_driver_with_default_qos_runs_the_policy(ros, tmp_path):
    """A ros2_control forward command controller subscribes with the default QoS (reliable, depth 10), and its
    joint_state_broadcaster publishes with it: policy_node's reliable commands reach the first, its sensor-data
    (best-effort) subscription takes the second, and the policy runs. As on a robot's computer, the node runs
    at the real-time priority and on the CPUs its parameters name, where the system permits it."""
    node, domain = ros
    driver = Driver(node, qos=10)  # rclpy's plain create_subscription(..., 10) / create_publisher(..., 10)
    params = policy_params("arm", SHIPPED_POLICIES / "arm.onnx", realtime_priority=20, cpu_affinity=[0])
    proc = start_node("policy_node", "arm", tmp_path, domain, params)
    try:
        wait_running(driver, proc, tmp_path, 60)
        log = (tmp_path / "policy_node.log").read_text()
        if not realtime_permitted():  # "" when permitted, else why not
            assert "real-time scheduling: SCHED_FIFO 20, CPUs [0]" in log, log
            threads = [int(t) for t in os.listdir(f"/proc/{proc.pid}/task")]
            assert {os.sched_getscheduler(t) for t in threads} == {os.SCHED_FIFO}
            assert all(os.sched_getaffinity(t) == {0} for t in threads)
        else:
            assert "SCHED_FIFO 20 not permitted" in log, log
        driver.commands.clear()
        driver.run(0.3)
        assert len(driver.commands) >= 5 and driver.kp_scale(driver.commands[-1][1]) == 1.0
        [offered] = node.get_publishers_info_by_topic("/joint_commands")
        assert offered.qos_profile.reliability == ReliabilityPolicy.RELIABLE
        assert "incompatible" not in (tmp_path / "policy_node.log").read_text().lower()
    finally:
        stop(proc)
        driver.close()


def test_a_qos_parameter_that_names_no_policy_refuses_to_start(ros, tmp_path):
    node, domain = ros
    # nested, as config/<robot>_nodes.yaml writes it, and dotted, as `-p` does
    bad = {"qos": {"joint_commands": {"reliability": "reliabel"}}, "qos.joint_states.depth": 0}
    proc = start_node(
        "policy_node", "arm", tmp_path, domain, policy_params("arm", SHIPPED_POLICIES / "arm.onnx", **bad)
    )
    assert proc.wait(timeout=60) == 2
    log = (tmp_path / "policy_node.log").read_text()
    assert "parameter qos.joint_commands.reliability: 'reliabel' is not one of ['reliable', 'best_effort']" in log, log
    assert "parameter qos.joint_states.depth: 0 is not a queue depth (>= 1)" in log, log
