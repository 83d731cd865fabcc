"""Conversions between standard ROS 2 messages and deploy's readings and commands, shared by every node.

Joint commands are a std_msgs/Float64MultiArray, as ros2_control's forward command controllers take:
joint robots send a (3, n) row-major array, rows `position` (rad), `kp_scale` (1 = the drive's own
position gain, 0 = none) and `kd` (N m s/rad; NaN = the drive's own damping), columns the joints in
the robot config's order. A thrust robot sends n motor thrusts (N) under the label `thrust`.
policy_io (Float64MultiArray) is one control step for the log: `obs`, raw `action`, the sent
`command`, and `timing` [step time s, loop jitter us, step compute us, mode index]; each layout
dimension names a segment, its `size` and its start offset in `stride`.
"""

from __future__ import annotations

import numpy as np
from std_msgs.msg import Float64MultiArray, MultiArrayDimension

COMMAND_ROWS = ("position", "kp_scale", "kd")
POLICY_IO_SEGMENTS = ("obs", "action", "command", "timing")


class MessageError(ValueError):
    """A message that does not fit what this robot expects (names, sizes, layout)."""


def stamp_ns(msg) -> int:
    return int(msg.header.stamp.sec) * 1_000_000_000 + int(msg.header.stamp.nanosec)


class JointStateReader:
    """sensor_msgs/JointState -> joint_pos, joint_vel in `names` order, whatever order the driver uses."""

    def __init__(self, names: tuple[str, ...]):
        self.names = tuple(names)
        self._order: np.ndarray | None = None
        self._msg_names: tuple[str, ...] = ()

    def __call__(self, msg) -> dict[str, np.ndarray]:
        if tuple(msg.name) != self._msg_names:  # the mapping is computed once per name list
            missing = [n for n in self.names if n not in msg.name]
            if missing:
                raise MessageError(f"joint_states lacks joints {missing} (it has {list(msg.name)})")
            self._order = np.array([list(msg.name).index(n) for n in self.names])
            self._msg_names = tuple(msg.name)
        pos = np.asarray(msg.position, dtype=np.float64)
        vel = np.asarray(msg.velocity, dtype=np.float64)
        if pos.size != len(msg.name) or vel.size != len(msg.name):
            raise MessageError(f"joint_states has {len(msg.name)} names, {pos.size} positions, {vel.size} velocities")
        return {"joint_pos": pos[self._order], "joint_vel": vel[self._order]}


def joint_state_msg(msg, names, pos, vel, effort=None):
    msg.name = list(names)
    msg.position = [float(x) for x in pos]
    msg.velocity = [float(x) for x in vel]
    msg.effort = [] if effort is None else [float(x) for x in effort]
    return msg


def imu_readings(msg) -> dict[str, np.ndarray]:
    q, w = msg.orientation, msg.angular_velocity
    return {"base_quat_wxyz": np.array([q.w, q.x, q.y, q.z]), "base_ang_vel_b": np.array([w.x, w.y, w.z])}


def imu_msg(msg, quat_wxyz, ang_vel_b):
    msg.orientation.w, msg.orientation.x, msg.orientation.y, msg.orientation.z = (float(v) for v in quat_wxyz)
    msg.angular_velocity.x, msg.angular_velocity.y, msg.angular_velocity.z = (float(v) for v in ang_vel_b)
    msg.linear_acceleration_covariance[0] = -1.0  # REP 145: no accelerometer reading in this message
    return msg


def odometry_readings(msg) -> dict[str, np.ndarray]:
    """nav_msgs/Odometry: pose in the world frame, twist in the body (child) frame, as REP 105 says."""
    p, q, v, w = msg.pose.pose.position, msg.pose.pose.orientation, msg.twist.twist.linear, msg.twist.twist.angular
    return {
        "base_pos_w": np.array([p.x, p.y, p.z]),
        "base_quat_wxyz": np.array([q.w, q.x, q.y, q.z]),
        "base_lin_vel_b": np.array([v.x, v.y, v.z]),
        "base_ang_vel_b": np.array([w.x, w.y, w.z]),
    }


def odometry_msg(msg, pos_w, quat_wxyz, lin_vel_b, ang_vel_b):
    p, q = msg.pose.pose.position, msg.pose.pose.orientation
    p.x, p.y, p.z = (float(v) for v in pos_w)
    q.w, q.x, q.y, q.z = (float(v) for v in quat_wxyz)
    t = msg.twist.twist
    t.linear.x, t.linear.y, t.linear.z = (float(v) for v in lin_vel_b)
    t.angular.x, t.angular.y, t.angular.z = (float(v) for v in ang_vel_b)
    return msg


def twist_command(msg) -> dict[str, np.ndarray]:
    return {"command": np.array([msg.linear.x, msg.linear.y, msg.angular.z])}


def point_target(msg) -> dict[str, np.ndarray]:
    return {"target_pos_w": np.array([msg.point.x, msg.point.y, msg.point.z])}


def _dims(segments: list[tuple[str, int]]) -> list[MultiArrayDimension]:
    dims, offset = [], 0
    for label, size in segments:
        dims.append(MultiArrayDimension(label=label, size=size, stride=offset))
        offset += size
    return dims


def command_msg(command: np.ndarray, kp_scale: float, kd: np.ndarray | None, joint_robot: bool) -> Float64MultiArray:
    msg = Float64MultiArray()
    n = len(command)
    if joint_robot:
        kd_row = np.full(n, np.nan) if kd is None else np.asarray(kd, dtype=np.float64)
        msg.layout.dim = [
            MultiArrayDimension(label="interface", size=3, stride=3 * n),
            MultiArrayDimension(label="joint", size=n, stride=n),
        ]
        msg.data = np.concatenate((command, np.full(n, kp_scale), kd_row)).tolist()
    else:
        msg.layout.dim = [MultiArrayDimension(label="thrust", size=n, stride=n)]
        msg.data = np.asarray(command, dtype=np.float64).tolist()
    return msg


def read_command(msg, n: int, joint_robot: bool) -> tuple[np.ndarray, float, np.ndarray | None]:
    """-> (command (n,), kp_scale, kd (n,) or None for the drive's own damping)."""
    data = np.asarray(msg.data, dtype=np.float64)
    want = 3 * n if joint_robot else n
    if data.size != want:
        raise MessageError(
            f"command has {data.size} values, expected {want} ({'3 x ' if joint_robot else ''}{n} actuators)"
        )
    if not joint_robot:
        return data, 1.0, None
    pos, kp, kd = data[:n], data[n : 2 * n], data[2 * n :]
    return pos, float(kp[0]), None if np.isnan(kd).all() else kd


def policy_io_msg(obs, action, command, timing) -> Float64MultiArray:
    parts = [np.asarray(x, dtype=np.float64).reshape(-1) for x in (obs, action, command, timing)]
    msg = Float64MultiArray()
    msg.layout.dim = _dims([(label, p.size) for label, p in zip(POLICY_IO_SEGMENTS, parts, strict=True)])
    msg.data = np.concatenate(parts).tolist()
    return msg


def read_policy_io(msg) -> dict[str, np.ndarray]:
    data = np.asarray(msg.data)
    return {d.label: data[d.stride : d.stride + d.size] for d in msg.layout.dim}
