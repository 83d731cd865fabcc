"""What a robot's sensors report (deploy.signals.READINGS), computed once from the batched MuJoCo state.

The training env computes them for every env (float32, on its device), the simulated robot for its one
env (float64, as its sensor topics publish them); both call `robot_readings`, and the observation terms
are then the robot runtime's own functions (deploy.signals.TERMS) of these readings.
"""

from __future__ import annotations

import torch

from deploy.rotations import quat_to_rotmat, world_to_body
from sim.robots import RobotModel


def robot_readings(
    robot: RobotModel, qpos: torch.Tensor, qvel: torch.Tensor, sensordata: torch.Tensor | None
) -> dict[str, torch.Tensor]:
    """`(n, nq)`, `(n, nv)`, `(n, nsensordata)` state of n worlds -> {reading: (n, size)} (sensordata
    only for a robot with joints or feet):

    - a floating base: base_pos_w, base_quat_wxyz, base_rotmat (body to world, (n, 3, 3)), base_lin_vel_w
      and base_lin_vel_b (the free joint's linear velocity is in the world frame), base_ang_vel_b (its
      angular velocity is in the body frame, as an IMU's gyro reports it);
    - joints, in the robot config's wire order: joint_pos, joint_vel, joint_effort (the drive's torque
      in the last physics step);
    - feet: foot_force_N, the normal contact force on each foot (the touch sensors around them);
    - an end effector: ee_pos_w, ee_quat_wxyz (its site's frame sensors; a task's measure, not a
      reading the policy is given).
    """
    out: dict[str, torch.Tensor] = {}
    if robot.base_qadr >= 0:
        q, d = robot.base_qadr, robot.base_dadr
        out["base_pos_w"] = qpos[:, q : q + 3]
        out["base_quat_wxyz"] = qpos[:, q + 3 : q + 7]
        out["base_rotmat"] = rot = quat_to_rotmat(out["base_quat_wxyz"])
        out["base_lin_vel_w"] = qvel[:, d : d + 3]
        out["base_lin_vel_b"] = world_to_body(rot, out["base_lin_vel_w"])
        out["base_ang_vel_b"] = qvel[:, d + 3 : d + 6]
    if robot.joint_qadr is None and robot.touch_adr is None and robot.ee_pos_adr < 0:
        return out  # a robot read from its state alone (a multirotor)
    if sensordata is None:
        raise ValueError(f"robot_readings: robot '{robot.cfg.name}' has sensors; sensordata is needed")
    if robot.joint_qadr is not None:
        out["joint_pos"] = qpos[:, robot.joint_qadr]
        out["joint_vel"] = qvel[:, robot.joint_dadr]
        out["joint_effort"] = sensordata[:, robot.torque_adr]
    if robot.touch_adr is not None:
        out["foot_force_N"] = sensordata[:, robot.touch_adr]
    if robot.ee_pos_adr >= 0:
        out["ee_pos_w"] = sensordata[:, robot.ee_pos_adr : robot.ee_pos_adr + 3]
        out["ee_quat_wxyz"] = sensordata[:, robot.ee_quat_adr : robot.ee_quat_adr + 4]
    return out
