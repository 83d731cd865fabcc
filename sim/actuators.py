"""Actuator models whose parameters differ per env: the quadrotor's rotors run in torch beside the physics;
joint drives run inside MuJoCo, with their per-env gains passed as controls."""

from __future__ import annotations

import mujoco
import torch


class RotorModel:
    """First-order motor lag and thrust constant for `(num_envs, num_rotors)` rotors.

    thrust_N follows the command with time constant `tau_s` (exact discretization over `dt_s`),
    then is scaled by `thrust_scale`, the env's error in the thrust constant; limits are applied to
    the command, as the ESC does.
    """

    def __init__(self, num_envs: int, num_rotors: int, dt_s: float, max_thrust_N: float, device):
        self.dt_s = dt_s
        self.max_thrust_N = max_thrust_N
        self.thrust_N = torch.zeros(num_envs, num_rotors, device=device)
        self.tau_s = torch.full((num_envs, 1), 0.03, device=device)
        self.thrust_scale = torch.ones(num_envs, 1, device=device)
        self._alpha = 1.0 - torch.exp(-dt_s / self.tau_s)

    def set_params(self, env_ids, tau_s: torch.Tensor, thrust_scale: torch.Tensor) -> None:
        self.tau_s[env_ids, 0] = tau_s
        self.thrust_scale[env_ids, 0] = thrust_scale
        self._alpha[env_ids, 0] = 1.0 - torch.exp(-self.dt_s / tau_s)

    def reset(self, env_ids, thrust_N: torch.Tensor) -> None:
        self.thrust_N[env_ids] = thrust_N

    def step(self, command_N: torch.Tensor) -> torch.Tensor:
        """Advance one step toward `command_N`; returns the produced thrust `(num_envs, num_rotors)`."""
        command_N = command_N.clamp(0.0, self.max_thrust_N)
        self.thrust_N += self._alpha * (command_N - self.thrust_N)
        return self.thrust_N * self.thrust_scale


# Every field an added actuator must not inherit from the model's own default class (a user's MJCF may
# give all its actuators a force range, a gear or dynamics there, which would clamp or change each term).
PLAIN_ACTUATOR = dict(
    gear=[1.0, 0, 0, 0, 0, 0],
    biastype=mujoco.mjtBias.mjBIAS_NONE,
    biasprm=[0.0] * 10,
    dyntype=mujoco.mjtDyn.mjDYN_NONE,
    dynprm=[1.0] + [0.0] * 9,
    ctrllimited=mujoco.mjtLimited.mjLIMITED_FALSE,
    forcelimited=mujoco.mjtLimited.mjLIMITED_FALSE,
    actlimited=mujoco.mjtLimited.mjLIMITED_FALSE,
)


def add_joint_drives(spec: mujoco.MjSpec, joint_names: tuple[str, ...], effort_limits: tuple[float, ...]) -> None:
    """Drive each named joint by a motor driver's PD law that MuJoCo evaluates at every physics step,
    with per-env gains supplied as controls:

        torque = clip(ff + kq * q + kqd * qd, -limit, limit),  ff = s kp target, kq = -s kp, kqd = -s kd

    Three actuators per joint: `drive_<joint>` carries `ff` (gain 1), `drive_<joint>_kq` and
    `drive_<joint>_kqd` carry `kq` and `kqd` (affine gains equal to the joint's position and velocity);
    the joint's actuatorfrcrange clamps their sum to `limit`. So the gains stay per-env inputs of one
    shared model and a whole control period steps in one rollout call (measured by `s2r bench sim`),
    instead of one call per physics step with the PD in torch. They replace whatever actuator the model
    had on the joint: a torque motor, or a servo's position actuator (the same PD law, run by the servo).
    A `jointactuatorfrc` sensor `drive_<joint>_torque` reports the torque applied in the last physics step.
    """
    for name, limit in zip(joint_names, effort_limits, strict=True):
        for act in [a for a in spec.actuators if a.trntype == mujoco.mjtTrn.mjTRN_JOINT and a.target == name]:
            spec.delete(act)
        joint = spec.joint(name)
        joint.actfrclimited = mujoco.mjtLimited.mjLIMITED_TRUE
        joint.actfrcrange = [-limit, limit]
        for suffix, gaintype, gain in (
            ("", mujoco.mjtGain.mjGAIN_FIXED, [1.0, 0.0, 0.0]),
            ("_kq", mujoco.mjtGain.mjGAIN_AFFINE, [0.0, 1.0, 0.0]),
            ("_kqd", mujoco.mjtGain.mjGAIN_AFFINE, [0.0, 0.0, 1.0]),
        ):
            spec.add_actuator(
                name=f"drive_{name}{suffix}",
                target=name,
                trntype=mujoco.mjtTrn.mjTRN_JOINT,
                gaintype=gaintype,
                gainprm=gain + [0.0] * 7,
                **PLAIN_ACTUATOR,
            )
        spec.add_sensor(
            name=f"drive_{name}_torque",
            type=mujoco.mjtSensor.mjSENS_JOINTACTFRC,
            objtype=mujoco.mjtObj.mjOBJ_JOINT,
            objname=name,
        )


class JointPD:
    """Per-env gains of the joint PD law a motor driver runs at the physics rate, batched
    `(num_envs, num_joints)`:

        torque = clip(strength * (kp * (target - q) - kd * qd), -limit, limit)

    kp, kd and motor strength are per env (randomized around the nominal gains); MuJoCo evaluates the
    law with the controls from `controls` (see add_joint_drives) and clamps to the torque limit.
    """

    def __init__(self, num_envs: int, kp: torch.Tensor, kd: torch.Tensor):
        self.kp_nominal, self.kd_nominal = kp, kd
        self.kp = kp.expand(num_envs, -1).clone()
        self.kd = kd.expand(num_envs, -1).clone()
        self.strength = torch.ones(num_envs, 1, device=kp.device)

    def set_params(self, env_ids, kp_scale: torch.Tensor, kd_scale: torch.Tensor, strength: torch.Tensor) -> None:
        """Scales `(len(env_ids),)` of the nominal gains, and motor strength."""
        self.kp[env_ids] = self.kp_nominal * kp_scale[:, None]
        self.kd[env_ids] = self.kd_nominal * kd_scale[:, None]
        self.strength[env_ids, 0] = strength

    def controls(self, target: torch.Tensor) -> torch.Tensor:
        """`(num_envs, 3 * num_joints)`: the drives' (ff, kq, kqd) controls for position targets `target`."""
        skp = self.strength * self.kp
        return torch.cat((skp * target, -skp, -self.strength * self.kd), dim=-1)
