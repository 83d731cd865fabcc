"""Randomization events. Each is a class built with the env and its config parameters; its mode says
when it acts:

- "startup": draws values per model variant once, when the env is built, and writes them into the
  backend's model variants (sim.backends: fields MuJoCo compiles into the model, such as friction and
  masses). At each reset an env draws a variant; its row of values goes into `env.params`.
- "reset": draws per-episode values for the envs being reset (`sample`) and applies them (`apply`,
  also called to restore a saved env and to pin a reality gap).
- "interval": acts every `interval_s` of an episode (`fire`).

The values of startup and reset events are the columns of `env.params` named by `columns`, in the
order the task's config lists its events: the critic sees all of them, so every randomized value
reaches it without a hand-written column. Ranges are (low, high), uniform; a scalar `x` is (-x, x).
"""

from __future__ import annotations

import numpy as np
import torch

from config.validate import ConfigError
from sim.robots import PAYLOAD_RADIUS_M
from sim.terms import registry

XYZ = ("x", "y", "z")


class Event:
    mode = "reset"
    columns: tuple[str, ...] = ()
    max_latency_steps = 0  # the most control steps it delays a command by (the env sizes its command queue so)

    def __init__(self, env):
        self.env = env

    def _uniform(self, n: int, low, high) -> torch.Tensor:
        """`(n, k)` uniform in [low, high) per column (`low`, `high`: k values each)."""
        env = self.env
        low = torch.as_tensor(low, dtype=torch.float32, device=env.device)
        high = torch.as_tensor(high, dtype=torch.float32, device=env.device)
        return low + torch.rand(n, len(low), generator=env.generator, device=env.device) * (high - low)


class ResetEvent(Event):
    """Per-episode values uniform in `(low, high)` per column; `apply` puts them into the env."""

    low: tuple[float, ...]
    high: tuple[float, ...]

    def sample(self, n: int) -> torch.Tensor:
        return self._uniform(n, self.low, self.high)

    def apply(self, env_ids: torch.Tensor, values: torch.Tensor) -> None:
        raise NotImplementedError


class StartupEvent(Event):
    """Values per model variant, written into the variants; the nominal model's with one variant."""

    mode = "startup"
    low: tuple[float, ...]
    high: tuple[float, ...]

    def sample_variants(self) -> torch.Tensor:
        """`(num_variants, len(columns))`, written into the backend's variants."""
        variants = self.env.backend.variants
        if len(variants) == 1:  # one shared model: nominal physics
            table = torch.as_tensor(np.asarray(self.nominal(), dtype=np.float32))[None]
        else:
            table = self._uniform(len(variants), self.low, self.high).cpu()
        for model, row in zip(variants, table.double().numpy(), strict=True):
            self.write(model, row)
        return table.to(self.env.device)

    def nominal(self) -> list[float]:
        raise NotImplementedError

    def write(self, model, row: np.ndarray) -> None:
        raise NotImplementedError


# --- reset: actuators and delays -------------------------------------------------------------------
class action_latency(ResetEvent):
    """Whole control steps between a command and the actuators, uniform over `steps` (both included)."""

    columns = ("latency_steps",)

    def __init__(self, env, steps: tuple[float, float] = (0, 1)):
        super().__init__(env)
        self.max_latency_steps = int(steps[1])
        self.low, self.high = (float(steps[0]),), (steps[1] + 0.999,)

    def sample(self, n):
        return super().sample(n).floor()

    def apply(self, env_ids, values):
        self.env.latency_steps[env_ids] = values[:, 0].long()


class joint_gains(ResetEvent):
    """Scales of the drives' kp and kd and of the motor strength (torque per command), per episode."""

    columns = ("kp_scale", "kd_scale", "motor_strength")

    def __init__(self, env, kp_scale=(0.8, 1.2), kd_scale=(0.8, 1.2), motor_strength=(0.9, 1.1)):
        super().__init__(env)
        self.low, self.high = zip(kp_scale, kd_scale, motor_strength, strict=True)

    def apply(self, env_ids, values):
        self.env.pd.set_params(env_ids, values[:, 0], values[:, 1], values[:, 2])


class rotor_params(ResetEvent):
    """Error in the rotors' thrust constant and their motor time constant, per episode."""

    columns = ("thrust_scale", "motor_tau_s")

    def __init__(self, env, thrust_scale=(0.9, 1.1), motor_tau_s=(0.02, 0.08)):
        super().__init__(env)
        self.low, self.high = zip(thrust_scale, motor_tau_s, strict=True)

    def apply(self, env_ids, values):
        self.env.rotors.set_params(env_ids, tau_s=values[:, 1], thrust_scale=values[:, 0])


class sensor_bias(ResetEvent):
    """A per-episode offset of every component of an observation term (an IMU's gyro bias, an encoder's
    zero offset), added to what the policy observes; uniform in +-`bias`."""

    def __init__(self, env, term: str, bias: float):
        super().__init__(env)
        names = {t.name: t.names for t in env.spec.obs}
        if term not in names:
            raise ConfigError(f"sensor_bias: the policy has no observation term '{term}' (terms: {', '.join(names)})")
        self.term = term
        self.cols = env.bias_columns(term)
        self.columns = tuple(f"{term}_bias_{n}" for n in names[term])
        self.low, self.high = (-bias,) * len(self.columns), (bias,) * len(self.columns)

    def apply(self, env_ids, values):
        self.env.sensor_bias[env_ids, self.cols] = values


# --- reset: a free-flying body ---------------------------------------------------------------------
class mass_scale(ResetEvent):
    """The body's mass (and inertia) times `scale`, by dividing every force applied to it (env.force_scale):
    for a free-flying rigid body with uniformly scaled inertia this is exactly the dynamics of the
    heavier body, and keeps one shared MjModel."""

    columns = ("mass_scale",)

    def __init__(self, env, scale=(0.85, 1.15)):
        super().__init__(env)
        if env.robot.cfg.kind != "multirotor":
            raise ConfigError(
                f"mass_scale: scaling the applied forces is a heavier body only for a free flyer that "
                f"only applied forces drive (a multirotor), not a {env.robot.cfg.kind} robot; use base_payload"
            )
        self.low, self.high = (scale[0],), (scale[1],)

    def apply(self, env_ids, values):
        self.env.force_scale[env_ids] = 1.0 / values


class base_force(ResetEvent):
    """A constant force on the base, world frame, per axis uniform in +-`force_N`, for the episode
    (wind, a cable, an unmodelled offset). Apply it after mass_scale: it goes through env.force_scale."""

    columns = tuple(f"disturbance_{a}_N" for a in XYZ)

    def __init__(self, env, force_N: float):
        super().__init__(env)
        self.low, self.high = (-force_N,) * 3, (force_N,) * 3

    def apply(self, env_ids, values):
        env = self.env
        force = (values * env.force_scale[env_ids]).to(env.backend.xfrc_applied)
        env.backend.xfrc_applied[env_ids.to(force.device), env.robot.base_body, :3] = force


# --- startup: model variants -----------------------------------------------------------------------
class foot_friction(StartupEvent):
    """The feet's and the floor's sliding friction (MuJoCo takes the larger of the two geoms')."""

    columns = ("friction",)

    def __init__(self, env, friction=(0.4, 1.25)):
        super().__init__(env)
        self.low, self.high = (friction[0],), (friction[1],)
        self.geoms = list(env.robot.foot_geoms) + [env.robot.floor_geom]

    def nominal(self):
        return [float(self.env.backend.model.geom_friction[self.env.robot.floor_geom, 0])]

    def write(self, model, row):
        model.geom_friction[self.geoms, 0] = row[0]


class base_payload(StartupEvent):
    """Mass added to the base body (negative: lighter) and its centre of mass moved, per axis +-`com_m`."""

    columns = ("payload_kg",) + tuple(f"payload_com_{a}_m" for a in XYZ)

    def __init__(self, env, mass_kg=(-1.0, 2.0), com_m: float = 0.05):
        super().__init__(env)
        self.low, self.high = (mass_kg[0],) + (-com_m,) * 3, (mass_kg[1],) + (com_m,) * 3

    def nominal(self):
        return [0.0] * 4

    def write(self, model, row):
        nominal, body = self.env.backend.model, self.env.robot.base_body
        model.body_mass[body] = nominal.body_mass[body] + row[0]
        model.body_ipos[body] = nominal.body_ipos[body] + row[1:4]


class payload_mass(StartupEvent):
    """Mass on the robot's payload body (config/robot.py: payload_body), a solid sphere's inertia."""

    columns = ("payload_kg",)

    def __init__(self, env, mass_kg=(0.0, 1.0)):
        super().__init__(env)
        self.low, self.high = (mass_kg[0],), (mass_kg[1],)

    def nominal(self):
        return [0.0]

    def write(self, model, row):
        body = self.env.robot.payload_body
        mass = self.env.backend.model.body_mass[body] + row[0]
        model.body_mass[body] = mass
        model.body_inertia[body] = 0.4 * mass * PAYLOAD_RADIUS_M**2


class joint_dynamics(StartupEvent):
    """Per joint: damping and armature times a scale, and dry friction (frictionloss) in N m."""

    def __init__(self, env, damping_scale=(0.5, 2.0), frictionloss_Nm=(0.0, 0.5), armature_scale=(0.9, 1.1)):
        super().__init__(env)
        joints = env.robot.cfg.joints.names
        n = len(joints)
        self.dofs = env.robot.joint_dadr
        self.columns = tuple(
            f"{j}_{what}" for what in ("damping_scale", "frictionloss_Nm", "armature_scale") for j in joints
        )
        self.low = (damping_scale[0],) * n + (frictionloss_Nm[0],) * n + (armature_scale[0],) * n
        self.high = (damping_scale[1],) * n + (frictionloss_Nm[1],) * n + (armature_scale[1],) * n

    def nominal(self):
        n = len(self.dofs)
        return [1.0] * n + list(self.env.backend.model.dof_frictionloss[self.dofs]) + [1.0] * n

    def write(self, model, row):
        d, n, nominal = self.dofs, len(self.dofs), self.env.backend.model
        model.dof_damping[d] = nominal.dof_damping[d] * row[:n]
        model.dof_frictionloss[d] = row[n : 2 * n]
        model.dof_armature[d] = nominal.dof_armature[d] * row[2 * n :]


# --- interval --------------------------------------------------------------------------------------
class push_base(Event):
    """A random horizontal kick of the base's velocity, per axis up to `vel_mps`, every `interval_s` of
    an episode (legged_gym's push_robots)."""

    mode = "interval"

    def __init__(self, env, vel_mps: float = 0.5, interval_s: float = 8.0):
        super().__init__(env)
        self.vel_mps = vel_mps
        self.interval_steps = max(1, round(interval_s * env.spec.control_hz))
        self.dof = env.robot.base_dadr

    def fire(self, env_ids):
        env = self.env
        if self.vel_mps > 0:
            kick = (torch.rand(len(env_ids), 2, generator=env.generator, device=env.device) * 2 - 1) * self.vel_mps
            qvel = env.backend.qvel
            qvel[env_ids.to(qvel.device), self.dof : self.dof + 2] += kick.to(qvel)


EVENTS = registry(
    action_latency,
    joint_gains,
    rotor_params,
    sensor_bias,
    mass_scale,
    base_force,
    foot_friction,
    base_payload,
    payload_mass,
    joint_dynamics,
    push_base,
)
