"""Commands: what an operator asks of the robot (a velocity, a target), an operator reading the policy
observes (deploy.signals.READINGS: `command`, `target_pos_w`). Each is drawn at every reset and, with
`resample_s`, again every `resample_s` of an episode; `steps_since` counts the control steps since an
env's last draw (evaluation measures tracking once a command has settled). With `max_rate`, a drawn command
is a target the observed value moves toward by at most `max_rate` per second (as a joystick or a velocity
smoother changes it), here and on the robot alike (the env writes it into PolicySpec.extra.command_max_rate
for deploy's Controller; only the velocity command takes one); a reset starts an episode at its draw."""

from __future__ import annotations

import torch

from deploy.arrays import step_toward
from sim.terms import registry


class Command:
    reading: str  # the reading it is
    level = ""  # the curriculum level that scales it, if any

    def __init__(self, env, size: int, resample_s: float = 0.0, max_rate: tuple[float, ...] | None = None):
        self.env = env
        self.value = torch.zeros(env.num_envs, size, device=env.device)  # what the policy observes
        self.target = torch.zeros_like(self.value)  # the last draw
        self.steps_since = torch.zeros(env.num_envs, dtype=torch.long, device=env.device)
        self.resample_steps = max(1, round(resample_s * env.spec.control_hz)) if resample_s > 0 else 0
        self.max_rate = max_rate
        self.max_step = None
        if max_rate is not None:
            if len(max_rate) != size or min(max_rate) <= 0:
                raise ValueError(f"max_rate: {size} positive rates (per second) expected, got {max_rate}")
            self.max_step = torch.tensor(max_rate, device=env.device) / env.spec.control_hz

    def resample(self, env_ids: torch.Tensor, at_reset: bool = False) -> None:
        """New targets for `env_ids`; at a reset (or without `max_rate`) the value jumps to them, otherwise
        it takes its first step toward them now (the step a jump would show up in)."""
        self.target[env_ids] = self.sample(len(env_ids))
        self.steps_since[env_ids] = 0
        if at_reset or self.max_step is None:
            self.value[env_ids] = self.target[env_ids]
        else:
            self.value[env_ids] = step_toward(self.value[env_ids], self.target[env_ids], self.max_step)

    def advance(self) -> None:
        """One control step: the value moves on toward its target."""
        self.steps_since += 1
        if self.max_step is not None:
            self.value.copy_(step_toward(self.value, self.target, self.max_step))

    def sample(self, n: int) -> torch.Tensor:
        raise NotImplementedError


class velocity_command(Command):
    """(lin_vel_x, lin_vel_y, yaw_rate) uniform in their ranges times the curriculum level
    `command_range`, and exactly zero (stand still) for `standing_fraction` of the draws; `max_rate`:
    (m/s^2, m/s^2, rad/s^2), how fast the observed command may follow a new draw (None: at once)."""

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
        max_rate: tuple[float, float, float] | None = None,
    ):
        super().__init__(env, 3, resample_s, max_rate)
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
