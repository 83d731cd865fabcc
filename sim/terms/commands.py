"""Commands: what an operator asks of the robot (a velocity, a target), an operator reading the policy
observes (deploy.signals.READINGS: `command`, `target_pos_w`). Each is drawn at every reset and, with
`resample_s`, again every `resample_s` of an episode; `steps_since` counts the control steps since an
env's last draw (evaluation measures tracking once a command has settled)."""

from __future__ import annotations

import torch

from sim.terms import registry


class Command:
    reading: str  # the reading it is
    level = ""  # the curriculum level that scales it, if any

    def __init__(self, env, size: int, resample_s: float = 0.0):
        self.env = env
        self.value = torch.zeros(env.num_envs, size, device=env.device)
        self.steps_since = torch.zeros(env.num_envs, dtype=torch.long, device=env.device)
        self.resample_steps = max(1, round(resample_s * env.spec.control_hz)) if resample_s > 0 else 0

    def resample(self, env_ids: torch.Tensor) -> None:
        self.value[env_ids] = self.sample(len(env_ids))
        self.steps_since[env_ids] = 0

    def sample(self, n: int) -> torch.Tensor:
        raise NotImplementedError


class velocity_command(Command):
    """(lin_vel_x, lin_vel_y, yaw_rate) uniform in their ranges times the curriculum level
    `command_range`, and exactly zero (stand still) for `standing_fraction` of the draws."""

    reading = "command"
    level = "command_range"

    def __init__(
        self,
        env,
        lin_vel_x_mps=(-1.0, 1.0),
        lin_vel_y_mps=(-0.6, 0.6),
        yaw_rate_radps=(-1.0, 1.0),
        standing_fraction: float = 0.1,
        resample_s: float = 5.0,
    ):
        super().__init__(env, 3, resample_s)
        self.low = torch.tensor((lin_vel_x_mps[0], lin_vel_y_mps[0], yaw_rate_radps[0]), device=env.device)
        self.high = torch.tensor((lin_vel_x_mps[1], lin_vel_y_mps[1], yaw_rate_radps[1]), device=env.device)
        self.standing_fraction = standing_fraction

    def sample(self, n):
        env = self.env
        u = torch.rand(n, 4, generator=env.generator, device=env.device)
        cmd = (self.low + u[:, :3] * (self.high - self.low)) * env.level(self.level)
        cmd[u[:, 3] < self.standing_fraction] = 0.0
        return cmd


class position_target(Command):
    """A target position uniform in a box (`center_m` +- `half_extent_m`, the robot's base frame)."""

    reading = "target_pos_w"

    def __init__(self, env, center_m=(0.0, 0.0, 0.0), half_extent_m=(0.1, 0.1, 0.1), resample_s: float = 0.0):
        super().__init__(env, 3, resample_s)
        self.center = torch.tensor(center_m, device=env.device)
        self.half = torch.tensor(half_extent_m, device=env.device)

    def sample(self, n):
        env = self.env
        u = torch.rand(n, 3, generator=env.generator, device=env.device)
        return self.center + (u * 2 - 1) * self.half


COMMANDS = registry(velocity_command, position_target)
