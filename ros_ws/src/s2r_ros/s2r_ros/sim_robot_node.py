"""sim_robot_node: a MuJoCo robot behind the topics a real robot's driver serves.

It steps the training task's physics (sim.sim_robot.SimRobot: one env, its actuator models and
randomization) in real time in its own thread, and at every physics step publishes what the robot's
sensors report: joint_states (joint robots), imu and odom (floating-base robots), i.e. 200 Hz for the
quadruped, 250 Hz for the arm; the quadrotor, whose motor model runs at the control rate, publishes
at 100 Hz (its physics takes four 400 Hz steps in between). The newest command is applied from the
next physics step on (the quadrotor's: the next control step), as a drive does; when commands stop
for `command_timeout_s` it goes passive (no gains, zero thrust).
It also plays the operator of the task's episodes (`operator: true`): it publishes each episode's
velocity command on cmd_vel or target on target, scores every episode with the task's evaluation
summary, and writes it to `summary_path` after `episodes` episodes (0: run forever). Physics waits
for the first command, and the first episode (soft start, arming) is not scored.
`gap` pins randomized parameters, e.g. ["motor_strength=0.8", "latency_steps=2"]: a reality gap.
Like the robot it stands for, it keeps real time on a busy machine: real-time scheduling and CPU affinity
(`realtime_priority`, `cpu_affinity`; run.go_realtime) where the system permits it.
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
from geometry_msgs.msg import PointStamped, Twist
from nav_msgs.msg import Odometry
from rclpy.node import Node
from sensor_msgs.msg import Imu, JointState
from std_msgs.msg import Float64MultiArray

from s2r_ros import messages as m
from s2r_ros import qos as q
from s2r_ros.run import REALTIME_PARAMETERS, go_realtime, run
from sim.sim_robot import SimRobot

PARAMETERS = {  # name: default; the launch files and YAML may set only these (and QOS's qos.<topic>.*)
    "task": "",  # the training task whose robot this is, e.g. quadruped-walk
    "robot": "",  # the robot: a built-in name (s2r robots) or a robot YAML path; empty: the task's own
    "seed": 0,
    "gap": [""],  # reality gap: randomized parameters pinned, "name=value"
    "operator": True,  # publish each episode's cmd_vel / target, as `s2r eval` commands them
    "episodes": 0,  # score this many episodes (after the warm-up one), then write summary_path
    "summary_path": "",
    "command_timeout_s": 0.1,  # commands older than this: the drive goes passive
    "frame_id": "base_link",
    **REALTIME_PARAMETERS,  # realtime_priority, cpu_affinity (run.py)
}
QOS = q.ROBOT_TOPICS  # topic: its QoS unless parameters qos.<topic>.* say otherwise (qos.py); + q.COMMANDS
WARMUP_EPISODES = 1  # the episode running when commands began includes arming: not scored


def parse_gap(items: list[str]) -> dict[str, float]:
    gap = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            if not sep:
                raise ValueError
            gap[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"parameter gap: '{item}' is not name=value") from None
    return gap


class SimRobotNode(Node):
    def __init__(self):
        super().__init__("sim_robot_node")
        for name, default in PARAMETERS.items():
            self.declare_parameter(name, default)
        get = lambda name: self.get_parameter(name).value  # noqa: E731 a one-line local alias
        task = get("task")
        if not task:
            raise ValueError("parameter task is not set (e.g. quadruped-walk)")
        gap = parse_gap([g for g in get("gap") if g])
        self.robot = SimRobot(task, seed=get("seed"), gap=gap, robot=get("robot") or None)
        self.joint_robot = self.robot.spec.action.type != "motor_thrust"
        self.n = self.robot.spec.action_dim
        self.operator = get("operator")
        self.episodes = get("episodes")
        self.summary_path = get("summary_path")
        self.command_timeout_ns = int(get("command_timeout_s") * 1e9)
        self.frame_id = get("frame_id")
        self._command: tuple[np.ndarray, float, np.ndarray | None] | None = None
        self._command_ns = 0
        self.commands_received = 0

        topic = "joint_commands" if self.joint_robot else "motor_thrust"
        qos = q.declare_qos(self, {**QOS, topic: q.COMMANDS})
        self.create_subscription(Float64MultiArray, topic, self._on_command, qos[topic])
        ops = self.robot.operator()
        self.joint_pub = (
            self.create_publisher(JointState, "joint_states", qos["joint_states"]) if self.robot.joint_names else None
        )
        self.imu_pub = self.create_publisher(Imu, "imu", qos["imu"]) if self.robot.has_base else None
        self.odom_pub = self.create_publisher(Odometry, "odom", qos["odom"]) if self.robot.has_base else None
        self.cmd_pub = (
            self.create_publisher(Twist, "cmd_vel", qos["cmd_vel"]) if self.operator and "command" in ops else None
        )
        self.target_pub = (
            self.create_publisher(PointStamped, "target", qos["target"])
            if self.operator and "target_pos_w" in ops
            else None
        )
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._simulate, name="simulation", daemon=True)
        self.get_logger().info(
            f"simulated {self.robot.spec.robot} ({task}) at {self.robot.control_hz:g} Hz; gap {gap or 'none'}"
        )

    def _on_command(self, msg) -> None:
        try:
            self._command = m.read_command(msg, self.n, self.joint_robot)
        except m.MessageError as e:
            self.get_logger().error(str(e), throttle_duration_sec=1.0)
            return
        self._command_ns = time.perf_counter_ns()
        self.commands_received += 1

    def _held_command(self) -> tuple[np.ndarray, float, np.ndarray | None]:
        """The latest command, or passive (no gains / zero thrust) when it is older than the timeout."""
        if self._command is not None and time.perf_counter_ns() - self._command_ns <= self.command_timeout_ns:
            return self._command
        if self.joint_robot:
            return self.robot.readings()["joint_pos"], 0.0, np.zeros(self.n)
        return np.zeros(self.n), 1.0, None

    def _simulate(self) -> None:
        """Real time on absolute deadlines, one per physics step; physics waits for the first command."""
        dt_ns = round(self.robot.physics_dt_s * 1e9)
        self._deadline_ns = time.perf_counter_ns()

        def between():  # before each physics step: wait for its time, report the sensors, take the newest command
            self._deadline_ns += dt_ns
            delay = (self._deadline_ns - time.perf_counter_ns()) / 1e9
            if delay > 0:
                time.sleep(delay)
            elif delay < -dt_ns / 1e9:  # fell behind (a slow step): drop the missed deadlines, no burst
                self._deadline_ns = time.perf_counter_ns()
            self._publish()
            return self._held_command()

        while not self._stop.is_set():
            self._publish_operator()
            if not self.commands_received:
                between()
                continue
            self.robot.step(*self._held_command(), between=between)
            self._check_done()

    def _check_done(self) -> None:
        rec = self.robot.recorder
        if self.episodes and len(rec.episodes) >= WARMUP_EPISODES + self.episodes:
            rec.episodes = rec.episodes[WARMUP_EPISODES : WARMUP_EPISODES + self.episodes]
            summary = {"task": self.robot.task, "episodes": self.episodes, "gap": self.robot.gap, **rec.summary()}
            if self.summary_path:
                tmp = Path(self.summary_path).with_suffix(".tmp")
                tmp.write_text(json.dumps(summary, indent=2))
                tmp.replace(self.summary_path)
            self.get_logger().info(f"{self.episodes} episodes scored: {json.dumps(summary)}")
            self.episodes = 0  # keep simulating; score once

    def _publish_operator(self) -> None:
        """The episode's command or target: it changes at most once per control period."""
        ops = self.robot.operator()
        stamp = self.get_clock().now().to_msg()
        if self.cmd_pub is not None:
            c = ops["command"]
            msg = Twist()
            msg.linear.x, msg.linear.y, msg.angular.z = float(c[0]), float(c[1]), float(c[2])
            self.cmd_pub.publish(msg)
        if self.target_pub is not None:
            msg = PointStamped()
            msg.header.stamp, msg.header.frame_id = stamp, "world"
            msg.point.x, msg.point.y, msg.point.z = (float(v) for v in ops["target_pos_w"])
            self.target_pub.publish(msg)

    def _publish(self) -> None:
        """The sensors, every physics step; the joint states last, so a controller paced by them (or by
        odom, on a robot without joints) has every other reading of this step when it runs."""
        r = self.robot.readings()
        stamp = self.get_clock().now().to_msg()
        if self.imu_pub is not None:
            msg = m.imu_msg(Imu(), r["base_quat_wxyz"], r["base_ang_vel_b"])
            msg.header.stamp, msg.header.frame_id = stamp, self.frame_id
            self.imu_pub.publish(msg)
            msg = m.odometry_msg(
                Odometry(), r["base_pos_w"], r["base_quat_wxyz"], r["base_lin_vel_b"], r["base_ang_vel_b"]
            )
            msg.header.stamp, msg.header.frame_id, msg.child_frame_id = stamp, "world", self.frame_id
            self.odom_pub.publish(msg)
        if self.joint_pub is not None:
            msg = m.joint_state_msg(
                JointState(), self.robot.joint_names, r["joint_pos"], r["joint_vel"], r["joint_effort"]
            )
            msg.header.stamp = stamp
            self.joint_pub.publish(msg)


def _stop(node: SimRobotNode) -> None:
    node._stop.set()
    node._thread.join(timeout=2.0)
    node.robot.close()


def _start(node: SimRobotNode) -> None:
    go_realtime(node)
    node._thread.start()


def main(args=None) -> int:
    return run("sim_robot_node", SimRobotNode, _start, _stop, args)


if __name__ == "__main__":
    sys.exit(main())
