"""Actuator models that run beside the physics, batched over envs, so their parameters can differ per env."""

from __future__ import annotations

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


class JointPD:
    """The joint PD law a motor driver runs at the physics rate, batched `(num_envs, num_joints)`:

        torque = clip(strength * (kp * (target - q) - kd * qd), -limit, limit)

    kp, kd and motor strength are per env (randomized around the nominal gains); `limit` is the
    motor's torque limit.
    """

    def __init__(self, num_envs: int, kp: torch.Tensor, kd: torch.Tensor, torque_limit: torch.Tensor):
        self.kp_nominal, self.kd_nominal = kp, kd
        self.kp = kp.expand(num_envs, -1).clone()
        self.kd = kd.expand(num_envs, -1).clone()
        self.strength = torch.ones(num_envs, 1, device=kp.device)
        self.torque_limit = torque_limit

    def set_params(self, env_ids, kp_scale: torch.Tensor, kd_scale: torch.Tensor, strength: torch.Tensor) -> None:
        """Scales `(len(env_ids),)` of the nominal gains, and motor strength."""
        self.kp[env_ids] = self.kp_nominal * kp_scale[:, None]
        self.kd[env_ids] = self.kd_nominal * kd_scale[:, None]
        self.strength[env_ids, 0] = strength

    def torque(self, target: torch.Tensor, q: torch.Tensor, qd: torch.Tensor) -> torch.Tensor:
        tau = self.strength * (self.kp * (target - q) - self.kd * qd)
        return torch.maximum(torch.minimum(tau, self.torque_limit), -self.torque_limit)
