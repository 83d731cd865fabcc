"""The policy's raw term signals, computed from what a robot reports (its sensor readings).

The training env and the robot share these functions, so a term means the same thing on both sides.
Readings are keyed by name (below), one robot at a time, in ROS conventions: quaternions (w, x, y, z),
body-frame velocities as nav_msgs/Odometry's twist and sensor_msgs/Imu's angular_velocity give them,
joints in the robot config's actuator order.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from deploy.rotations import projected_gravity, quat_to_rotmat, world_to_body
from deploy.spec import PolicySpec, SpecError

# reading name -> (size, what reports it)
READINGS = {
    "base_pos_w": (3, "odometry pose position, m"),
    "base_quat_wxyz": (4, "orientation, imu or odometry"),
    "base_lin_vel_b": (3, "odometry twist linear, body frame, m/s"),
    "base_ang_vel_b": (3, "imu angular velocity, body frame, rad/s"),
    "joint_pos": (None, "joint_state position, rad"),
    "joint_vel": (None, "joint_state velocity, rad/s"),
    "command": (3, "velocity command (twist linear x, y; angular z)"),
    "target_pos_w": (3, "target position, m"),
}


def base_rotmat(r: dict):
    """The base's rotation matrix from the readings' quaternion, computed once per readings dict (the
    terms pos_error_b, rot_mat and projected_gravity all need it; a training env's readings carry it)."""
    if "base_rotmat" not in r:
        r["base_rotmat"] = quat_to_rotmat(r["base_quat_wxyz"])
    return r["base_rotmat"]


def _flat9(rot):
    return rot.reshape(tuple(rot.shape[:-2]) + (9,))


# term name -> (readings it needs, function(readings, default_joint_pos) -> (..., size) signal). The
# functions take one robot's readings (size,) or a batch (num_envs, size), numpy or torch alike.
TERMS: dict[str, tuple[tuple[str, ...], Callable]] = {
    "pos_error_b": (
        ("base_pos_w", "base_quat_wxyz", "target_pos_w"),
        lambda r, d: world_to_body(base_rotmat(r), r["base_pos_w"] - r["target_pos_w"]),
    ),
    "rot_mat": (("base_quat_wxyz",), lambda r, d: _flat9(base_rotmat(r))),
    "lin_vel_b": (("base_lin_vel_b",), lambda r, d: r["base_lin_vel_b"]),
    "ang_vel_b": (("base_ang_vel_b",), lambda r, d: r["base_ang_vel_b"]),
    "projected_gravity": (("base_quat_wxyz",), lambda r, d: projected_gravity(base_rotmat(r))),
    "command": (("command",), lambda r, d: r["command"]),
    "joint_pos_rel": (("joint_pos",), lambda r, d: r["joint_pos"] - d),
    "joint_vel": (("joint_vel",), lambda r, d: r["joint_vel"]),
    "target_pos": (("target_pos_w",), lambda r, d: r["target_pos_w"]),
}
FILLED_BY_CONTROLLER = ("last_action",)


def required_readings(spec: PolicySpec) -> tuple[str, ...]:
    """The readings a robot must report to run this policy (SpecError for a term no robot can supply)."""
    needed: list[str] = []
    for term in spec.obs:
        if term.name in FILLED_BY_CONTROLLER:
            continue
        if term.name not in TERMS:
            raise SpecError(f"observation term '{term.name}' has no robot-side signal (known: {sorted(TERMS)})")
        needed += [k for k in TERMS[term.name][0] if k not in needed]
    return tuple(needed)


def term_functions(spec: PolicySpec) -> list[tuple[str, Callable]]:
    """(term name, function) for every term of `spec` the controller does not fill, in spec order."""
    required_readings(spec)  # fail at start, not in the loop
    return [(t.name, TERMS[t.name][1]) for t in spec.obs if t.name not in FILLED_BY_CONTROLLER]


def default_joint_pos(spec: PolicySpec) -> np.ndarray:
    """What joint_pos_rel is relative to: the policy's zero action (its action offset), as in training."""
    return np.asarray(spec.action.offset if spec.action.type == "joint_position" else (), dtype=np.float64)


def make_signals(spec: PolicySpec) -> Callable[[dict], dict]:
    """`readings -> {term name: (size,) float64}` for every term of `spec` the controller does not fill:
    one robot's readings, as the robot runtime and replay compute them."""
    terms, default = term_functions(spec), default_joint_pos(spec)

    def signals(readings: dict) -> dict:
        r = {k: np.asarray(v, dtype=np.float64) for k, v in readings.items()}
        return {name: fn(r, default) for name, fn in terms}

    return signals
