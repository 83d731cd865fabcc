"""Sensor message in -> command message out, through a policy_node process over Fast DDS on loopback.

The bench plays the robot's driver: it publishes sensor_msgs/JointState at the policy rate to a
policy_node paced by that stream (trigger: joint_state) and times each publish until the command it
caused is received by the bench's middleware (DDS's receive timestamp, so the bench's own executor
wake-up is not counted), and until the node published it (the command's source timestamp).
"""

from __future__ import annotations

import random
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from s2r_ros.processes import CONFIG, policy_params, ros_env, start_node, stop, wait_for


def bench_dds_latency(policy: Path, robot: str = "arm", seconds: float = 10.0, realtime_priority: int = 50) -> dict:
    """policy_node runs at `realtime_priority` (0: ordinary scheduling), as its parameter says on a robot."""
    import os

    import rclpy
    from rclpy.node import Node
    from rclpy.qos import QoSPresetProfiles
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray, String

    from deploy.onnx_policy import OnnxPolicy
    from deploy.robot_config import load_robot_config

    cfg = load_robot_config(CONFIG / f"{robot}.yaml", OnnxPolicy(policy).spec)
    domain = random.randint(1, 200)
    os.environ.update({k: v for k, v in ros_env(domain).items() if k.startswith(("ROS_", "RMW_"))})
    tmp = Path(tempfile.mkdtemp(prefix="s2r_bench_dds_"))
    params = policy_params(robot, policy, trigger="joint_state", realtime_priority=realtime_priority)
    proc = start_node("policy_node", robot, tmp, domain, params)
    rclpy.init()
    from rclpy.executors import SingleThreadedExecutor

    node = Node("bench_driver")
    executor = SingleThreadedExecutor()  # its wake-up is not in the figures: they use DDS's timestamps
    executor.add_node(node)
    try:
        qos = QoSPresetProfiles.SENSOR_DATA.value
        pub = node.create_publisher(JointState, "joint_states", qos)
        arrived = threading.Event()
        stamps_ns = [0, 0]  # the command's publish and receive times, from the middleware (system clock)
        modes: list[str] = []

        def on_command(_msg, info):
            stamps_ns[:] = info["source_timestamp"], info["received_timestamp"]
            arrived.set()

        node.create_subscription(Float64MultiArray, "joint_commands", on_command, qos)
        node.create_subscription(String, "policy_node/mode", lambda m: modes.append(m.data), 10)
        msg = JointState()
        msg.name = list(cfg.actuators)
        msg.position = [float(q) for q in cfg.default_pos_rad]
        msg.velocity = [0.0] * len(cfg.actuators)
        period_s = 1.0 / cfg.control_hz

        def spin_until(deadline_ns: int, stop_early: bool = False) -> None:
            while time.perf_counter_ns() < deadline_ns and not (stop_early and arrived.is_set()):
                executor.spin_once(timeout_sec=max(0.0, (deadline_ns - time.perf_counter_ns()) / 1e9))

        def publish_once():
            pub.publish(msg)
            spin_until(time.perf_counter_ns() + round(period_s * 1e9))

        wait_for(
            lambda: "running" in modes or proc.poll() is not None, 60, spin=publish_once, what="policy_node running"
        )
        if proc.poll() is not None:
            raise RuntimeError(f"policy_node exited: {(tmp / 'policy_node.log').read_text()}")
        latencies, node_latencies = [], []
        sent = 0
        next_ns = time.perf_counter_ns()
        end = next_ns + int(seconds * 1e9)
        while next_ns < end:
            spin_until(next_ns)
            arrived.clear()
            t0 = time.perf_counter_ns()
            t0_wall = time.time_ns()
            pub.publish(msg)
            sent += 1
            spin_until(t0 + round(period_s * 0.9e9), stop_early=True)
            if arrived.is_set():
                latencies.append(stamps_ns[1] - t0_wall)
                node_latencies.append(stamps_ns[0] - t0_wall)
            next_ns += round(period_s * 1e9)
        x = np.asarray(latencies, dtype=np.float64) / 1e3
        y = np.asarray(node_latencies, dtype=np.float64) / 1e3
        return {
            "robot": robot,
            "messages": len(latencies),
            "lost": sent - len(latencies),
            "p50_us": float(np.percentile(x, 50)),
            "p99_us": float(np.percentile(x, 99)),
            "max_us": float(x.max()),
            "to_command_published_p50_us": float(np.percentile(y, 50)),
            "to_command_published_p99_us": float(np.percentile(y, 99)),
        }
    finally:
        executor.shutdown()
        node.destroy_node()
        rclpy.try_shutdown()
        stop(proc)
