"""Sensor message in -> command message out, through a policy_node process over Fast DDS on loopback.

The bench plays the robot's driver: it publishes sensor_msgs/JointState at the policy rate to a
policy_node paced by that stream (trigger: joint_state) and times each publish until the command
it caused arrives (matched by count: one command per JointState once running).
"""

from __future__ import annotations

import random
import tempfile
import time
from pathlib import Path

import numpy as np

from s2r_ros.processes import CONFIG, policy_params, ros_env, start_node, stop, wait_for


def bench_dds_latency(policy: Path, robot: str = "arm", seconds: float = 10.0) -> dict:
    import os

    import rclpy
    from rclpy.node import Node
    from rclpy.qos import QoSPresetProfiles
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray, String

    from deploy.robot_config import RobotConfig

    cfg = RobotConfig.from_yaml(CONFIG / f"{robot}.yaml")
    domain = random.randint(1, 200)
    os.environ.update({k: v for k, v in ros_env(domain).items() if k.startswith(("ROS_", "RMW_"))})
    tmp = Path(tempfile.mkdtemp(prefix="s2r_bench_dds_"))
    proc = start_node("policy_node", robot, tmp, domain, policy_params(robot, policy, trigger="joint_state"))
    rclpy.init()
    node = Node("bench_driver")
    try:
        qos = QoSPresetProfiles.SENSOR_DATA.value
        pub = node.create_publisher(JointState, "joint_states", qos)
        received: list[int] = []
        modes: list[str] = []
        node.create_subscription(Float64MultiArray, "joint_commands", lambda m: received.append(time.perf_counter_ns()), qos)
        node.create_subscription(String, "policy_node/mode", lambda m: modes.append(m.data), 10)
        msg = JointState()
        msg.name = list(cfg.actuators)
        msg.position = [float(q) for q in cfg.default_pos_rad]
        msg.velocity = [0.0] * len(cfg.actuators)

        def publish_once():
            pub.publish(msg)
            rclpy.spin_once(node, timeout_sec=1.0 / cfg.control_hz)

        wait_for(lambda: "running" in modes or proc.poll() is not None, 60, spin=publish_once, what="policy_node running")
        if proc.poll() is not None:
            raise RuntimeError(f"policy_node exited: {(tmp / 'policy_node.log').read_text()}")
        latencies = []
        period_ns = round(1e9 / cfg.control_hz)
        end = time.perf_counter_ns() + int(seconds * 1e9)
        while time.perf_counter_ns() < end:
            received.clear()
            t0 = time.perf_counter_ns()
            pub.publish(msg)
            while not received and time.perf_counter_ns() - t0 < period_ns:
                rclpy.spin_once(node, timeout_sec=0.0005)
            if received:
                latencies.append(received[0] - t0)
            while time.perf_counter_ns() - t0 < period_ns:  # the next sensor message one period later
                rclpy.spin_once(node, timeout_sec=max(0.0, (period_ns - (time.perf_counter_ns() - t0)) / 1e9))
        sent = int(seconds * cfg.control_hz)
        x = np.asarray(latencies, dtype=np.float64) / 1e3
        return {"robot": robot, "messages": len(latencies), "lost": max(0, sent - len(latencies)),
                "p50_us": float(np.percentile(x, 50)), "p99_us": float(np.percentile(x, 99)), "max_us": float(x.max())}
    finally:
        node.destroy_node()
        rclpy.try_shutdown()
        stop(proc)
