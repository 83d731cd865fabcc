"""quadrotor-hover: fly to and hold a target position from a random position, velocity and attitude,
on any multirotor robot (config/robot.py: rotors, base body, control rate).

Actor: noisy position error and linear velocity (body frame), rotation matrix, angular velocity, recent
actions. Body-frame errors make the map from observation to rotor commands independent of yaw.
Critic: the actor's observations, the same quantities without noise, rotor thrusts, and every
randomized parameter (which includes the disturbance).
Mass is randomized by scaling every applied force by 1/mass_scale: for a free-flying rigid body with
uniformly scaled inertia this is exactly the dynamics of the heavier body, and keeps one shared
MjModel (see sim/backends/mujoco_cpu.py for why).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from deploy.spec import ActionSpec, ObsTerm, PolicySpec, SpecExtra
from sim.actuators import RotorModel
from config.robot import GRAVITY_MPS2
from config.validate import SensorNoiseCfg, noise_distribution, nonnegative, positive
from sim.backends import make_backend
from sim.env import BatchedEnv
from deploy.rotations import tilt_quat
from sim.readings import robot_readings
from sim.robots import RobotModel, find_robot, robot_model


@dataclass(frozen=True)
class InitCfg:
    """Initial-state ranges at full curriculum level (uniform, symmetric)."""

    pos_m: float = field(default=0.5, metadata=nonnegative())
    lin_vel_mps: float = field(default=0.5, metadata=nonnegative())
    tilt_rad: float = field(default=0.5, metadata=nonnegative())
    ang_vel_radps: float = field(default=1.0, metadata=nonnegative())


@dataclass(frozen=True)
class CurriculumCfg:
    """Initial-state ranges scale with `level`, raised while most episodes survive to the time limit."""

    enabled: bool = True
    start_level: float = field(default=0.3, metadata=nonnegative())
    step: float = field(default=0.1, metadata=positive())
    promote_timeout_rate: float = 0.8
    demote_timeout_rate: float = 0.4
    window_fraction: float = field(default=0.5, metadata=positive())  # episodes per decision / num_envs


@dataclass(frozen=True)
class RandomizationCfg:
    """Per-env parameters, resampled at every reset. Ranges are (low, high)."""

    mass_scale: tuple[float, float] = (0.85, 1.15)
    thrust_scale: tuple[float, float] = (0.9, 1.1)
    motor_tau_s: tuple[float, float] = (0.02, 0.08)
    latency_steps: tuple[int, int] = (0, 2)
    pos_bias_m: float = field(default=0.01, metadata=nonnegative())
    gyro_bias_radps: float = field(default=0.02, metadata=nonnegative())
    disturbance_N: float = field(default=0.02, metadata=nonnegative())  # per axis, world frame


@dataclass(frozen=True)
class NoiseCfg(SensorNoiseCfg):
    """Sensor noise standard deviations, per step. Gaussian: with uniform noise of the same standard
    deviation, seed 0 of the default command ended on a policy that crashed 6.5 % of evaluation
    episodes (Gaussian: 98.5 % success; README)."""

    distribution: str = noise_distribution("gaussian")

    pos_m: float = field(default=0.005, metadata=nonnegative())
    rot: float = field(default=0.01, metadata=nonnegative())
    lin_vel_mps: float = field(default=0.02, metadata=nonnegative())
    ang_vel_radps: float = field(default=0.05, metadata=nonnegative())


@dataclass(frozen=True)
class QuadrotorHoverCfg:
    robot: str = "crazyflie"  # a multirotor: built-in name or robot YAML path (s2r robots)
    episode_s: float = field(default=5.0, metadata=positive())
    target_pos_m: tuple[float, float, float] = (0.0, 0.0, 1.0)
    action_history: int = field(default=4, metadata=positive())
    crash_height_m: float = 0.05
    max_pos_error_m: float = field(default=1.0, metadata=positive())  # per axis
    success_radius_m: float = field(default=0.1, metadata=positive())
    precision_radius_m: float = field(default=0.1, metadata=positive())
    success_after_s: float = field(default=2.0, metadata=nonnegative())
    init: InitCfg = InitCfg()
    curriculum: CurriculumCfg = CurriculumCfg()
    randomization: RandomizationCfg = RandomizationCfg()
    noise: NoiseCfg = NoiseCfg()
    reward: dict[str, float] = field(
        default_factory=lambda: {
            "alive": 1.0,
            "pos_error": -0.5,
            "pos_precision": 2.0,
            "lin_vel": -0.05,
            "ang_vel": -0.02,
            "tilt": -0.1,
            "action": -0.01,
            "action_rate": -0.02,
        }
    )


PARAM_NAMES = (
    "mass_scale", "thrust_scale", "motor_tau_s", "latency_steps",
    "pos_bias_x_m", "pos_bias_y_m", "pos_bias_z_m",
    "gyro_bias_x_radps", "gyro_bias_y_radps", "gyro_bias_z_radps",
    "disturbance_x_N", "disturbance_y_N", "disturbance_z_N",
)
# columns of `params`
MASS, THRUST, TAU, LATENCY = 0, 1, 2, 3
POS_BIAS, GYRO_BIAS, DISTURBANCE = slice(4, 7), slice(7, 10), slice(10, 13)


def hover_thrust_N(mass_kg: float, num_rotors: int) -> float:
    """Per-rotor thrust that holds the nominal body aloft."""
    return mass_kg * GRAVITY_MPS2 / num_rotors


def make_spec(cfg: QuadrotorHoverCfg, robot: RobotModel) -> PolicySpec:
    rotors = robot.cfg.rotors
    n = len(rotors.names)
    hover_N = hover_thrust_N(robot.mass_kg, n)
    xyz = ("x", "y", "z")
    return PolicySpec(
        robot=robot.cfg.name,
        task="quadrotor-hover",
        control_hz=robot.cfg.control_hz,
        obs=(
            ObsTerm("pos_error_b", xyz, (1.0,) * 3, clip=5.0, unit="m"),
            ObsTerm("rot_mat", tuple(f"r{i}{j}" for i in range(3) for j in range(3)), (1.0,) * 9, unit=""),
            ObsTerm("lin_vel_b", xyz, (0.5,) * 3, clip=5.0, unit="m/s"),
            ObsTerm("ang_vel_b", xyz, (0.2,) * 3, clip=5.0, unit="rad/s"),
            ObsTerm("last_action", rotors.names, (1.0,) * n, history=cfg.action_history),
        ),
        action=ActionSpec(
            type="motor_thrust",
            names=rotors.names,
            scale=(rotors.max_thrust_N - hover_N,) * n,
            offset=(hover_N,) * n,
            clip=1.0,
            low=(0.0,) * n,
            high=(rotors.max_thrust_N,) * n,
            unit="N",
        ),
        extra=SpecExtra(
            physics_hz=robot.physics_hz, target_pos_m=tuple(cfg.target_pos_m),
            success=f"within {cfg.success_radius_m} m of the target from {cfg.success_after_s} s after start until the episode ends",
        ),
    )


def hover_summary(cfg: QuadrotorHoverCfg, control_hz: float, pos_error_m: np.ndarray, alive: np.ndarray, crashed: np.ndarray) -> dict:
    """pos_error_m, alive: (steps, episodes). Success: no termination, and within `success_radius_m`
    of the target at every step from `success_after_s` until the episode ends."""
    settle = int(round(cfg.success_after_s * control_hz))
    late_err = np.where(alive[settle:], pos_error_m[settle:], np.nan)
    survived = ~crashed
    # worst error after settling; an episode that ended before settling has none and fails
    worst = np.where(alive[settle:], pos_error_m[settle:], -np.inf).max(axis=0, initial=-np.inf)
    within = (worst >= 0) & (worst <= cfg.success_radius_m)
    success = survived & within
    mean_err = float(np.nanmean(late_err[:, survived])) if survived.any() else float("nan")
    return {
        "success_rate": float(success.mean()),
        "crash_rate": float(crashed.mean()),
        "mean_pos_error_m": mean_err,
        "final_pos_error_m": float(np.nanmean(np.where(survived, pos_error_m[-1], np.nan))) if survived.any() else float("nan"),
        "success_definition": f"within {cfg.success_radius_m} m of the target at every step from "
        f"{cfg.success_after_s} s after start until the {cfg.episode_s} s episode ends, without a crash",
    }


class QuadrotorHoverEnv(BatchedEnv):
    param_names = PARAM_NAMES

    def __init__(self, cfg: QuadrotorHoverCfg, num_envs: int, device="cpu", seed: int = 0, backend="mujoco"):
        self.cfg = cfg
        self.robot = robot = robot_model(find_robot(cfg.robot), kind="multirotor")
        self.backend = make_backend(backend, robot.model, num_envs)
        self.decimation = robot.decimation
        self.base_body = robot.base_body
        self.mass_kg = robot.mass_kg
        self.num_rotors = len(robot.cfg.rotors.names)
        self.max_thrust_N = robot.cfg.rotors.max_thrust_N
        self.spec = make_spec(cfg, robot)
        self.reward_weights = dict(cfg.reward)
        self.max_episode_steps = round(cfg.episode_s * robot.cfg.control_hz)
        self.max_latency_steps = cfg.randomization.latency_steps[1]
        super().__init__(num_envs, device, seed)
        self.target_pos_m = torch.tensor(cfg.target_pos_m, device=self.device)
        self.rotors = RotorModel(num_envs, self.num_rotors, 1.0 / robot.cfg.control_hz, self.max_thrust_N, self.device)
        # the rotors' ctrl columns: all of them (one copy) unless the model has actuators of its own
        nu = robot.model.nu
        self._rotor_ctrl = None if np.array_equal(robot.rotor_ctrl, np.arange(nu)) else torch.as_tensor(robot.rotor_ctrl)
        self.curriculum_level = cfg.curriculum.start_level if cfg.curriculum.enabled else 1.0
        self._inv_mass_scale = torch.ones(num_envs, 1, device=self.device)
        self._window = torch.zeros(2, dtype=torch.float64)  # (timeouts, episodes) since the last level move
        self._update_state()
        init, dr = cfg.init, cfg.randomization
        self._init_half_range = torch.tensor(
            (init.pos_m,) * 3 + (init.lin_vel_mps,) * 3 + (init.ang_vel_radps,) * 3, device=self.device
        )
        bounds = [dr.mass_scale, dr.thrust_scale, dr.motor_tau_s, (dr.latency_steps[0], dr.latency_steps[1] + 0.999)]
        bounds += [(-dr.pos_bias_m, dr.pos_bias_m)] * 3 + [(-dr.gyro_bias_radps, dr.gyro_bias_radps)] * 3
        bounds += [(-dr.disturbance_N, dr.disturbance_N)] * 3
        self._param_low, self._param_high = torch.tensor(bounds, device=self.device).T
        self._pos_bias_cols, self._gyro_bias_cols = self.bias_columns("pos_error_b"), self.bias_columns("ang_vel_b")

    def _noise_std_by_term(self) -> dict[str, float]:
        n = self.cfg.noise
        return {"pos_error_b": n.pos_m, "rot_mat": n.rot, "lin_vel_b": n.lin_vel_mps, "ang_vel_b": n.ang_vel_radps}

    # --- state -----------------------------------------------------------------------------------
    def _update_state(self, env_ids: torch.Tensor | None = None) -> None:
        """The robot's readings (float32) from the backend: all envs, or just `env_ids` after their reset."""
        qpos, qvel = self.backend.qpos, self.backend.qvel
        if env_ids is None:
            r = robot_readings(self.robot, qpos.to(self.device, torch.float32), qvel.to(self.device, torch.float32), None)
            self.readings = {**r, "target_pos_w": self.target_pos_m.expand(self.num_envs, 3)}
            self.pos_m, self.rot = r["base_pos_w"], r["base_rotmat"]  # (n, 3, 3) body to world
            self.lin_vel_mps, self.ang_vel_radps = r["base_lin_vel_w"], r["base_ang_vel_b"]
            self.pos_error_m = self.pos_m - self.target_pos_m
            return
        cpu_ids = env_ids.to(qpos.device)
        r = robot_readings(self.robot, qpos[cpu_ids].to(self.device, torch.float32), qvel[cpu_ids].to(self.device, torch.float32), None)
        for k, v in r.items():
            self.readings[k][env_ids] = v
        self.pos_error_m[env_ids] = r["base_pos_w"] - self.target_pos_m

    def _physics_ok(self) -> torch.Tensor:
        return self.backend.physics_ok().to(self.device)

    # --- task pieces -----------------------------------------------------------------------------
    def _reset_envs(self, env_ids: torch.Tensor) -> None:
        n = len(env_ids)
        u = torch.rand(n, 9 + 3 + len(PARAM_NAMES), generator=self.generator, device=self.device)
        # initial state: position, linear and angular velocity uniform in +-range, attitude tilted
        state = (u[:, :9] * 2 - 1) * (self._init_half_range * self.curriculum_level)
        qpos = torch.cat((self.target_pos_m + state[:, :3], tilt_quat(u[:, 9:12], self.cfg.init.tilt_rad * self.curriculum_level)), -1)
        self.backend.reset(env_ids, qpos, state[:, 3:9])
        # randomized parameters, uniform in [low, high]; latency uniform over whole steps
        p = self._param_low + u[:, 12:] * (self._param_high - self._param_low)
        p[:, LATENCY] = p[:, LATENCY].floor()
        self.params[env_ids] = p
        self._apply_params(env_ids)
        hover_N = hover_thrust_N(self.mass_kg, self.num_rotors) * p[:, MASS] / p[:, THRUST]
        self.rotors.reset(env_ids, hover_N[:, None].expand(n, self.num_rotors))
        self._update_state(env_ids)

    def _apply_params(self, env_ids) -> None:
        """Everything that follows from an env's randomized parameters and is constant over its episode.

        Every applied force is divided by mass_scale: the dynamics of the heavier body. The
        disturbance is written here once; the backend holds it until the next reset.
        """
        p = self.params[env_ids]
        self.sensor_bias[env_ids, self._pos_bias_cols] = p[:, POS_BIAS]
        self.sensor_bias[env_ids, self._gyro_bias_cols] = p[:, GYRO_BIAS]
        self.latency_steps[env_ids] = p[:, LATENCY].long()
        self.rotors.set_params(env_ids, tau_s=p[:, TAU], thrust_scale=p[:, THRUST])
        self._inv_mass_scale[env_ids] = 1.0 / p[:, MASS : MASS + 1]
        disturbance = (p[:, DISTURBANCE] * self._inv_mass_scale[env_ids]).to(self.backend.xfrc_applied)
        self.backend.xfrc_applied[env_ids.to(disturbance.device), self.base_body, :3] = disturbance

    def _apply_command(self, command: torch.Tensor) -> None:
        if self.physics_step_hook is not None:  # once per command: the motor model runs at the control rate
            command = self.physics_step_hook(command)
        thrust_N = self.rotors.step(command) * self._inv_mass_scale
        if self._rotor_ctrl is None:
            self.backend.ctrl.copy_(thrust_N)
        else:
            self.backend.ctrl[:, self._rotor_ctrl] = thrust_N.to(self.backend.ctrl)
        self.backend.step(self.decimation)
        self._update_state()

    def _privileged(self) -> torch.Tensor:
        thrust_frac = self.rotors.thrust_N / self.max_thrust_N
        return torch.cat((thrust_frac, self.params), dim=-1)

    def _terminations(self) -> dict[str, torch.Tensor]:
        return {
            "crash": self.pos_m[:, 2] < self.cfg.crash_height_m,
            "out_of_bounds": self.pos_error_m.abs().amax(-1) > self.cfg.max_pos_error_m,
        }

    # --- reward terms (weights in cfg.reward) -------------------------------------------------
    def _reward_alive(self):
        return torch.ones(self.num_envs, device=self.device)

    def _reward_pos_error(self):
        return self.pos_error_m.norm(dim=-1)

    def _reward_pos_precision(self):
        """1 at the target, falling off within `precision_radius_m`: rewards holding position closely."""
        return torch.exp(-(self.pos_error_m.square().sum(-1) / self.cfg.precision_radius_m**2))

    # Squared-rate penalties are capped: a tumbling drone would otherwise earn returns so negative
    # that one batch of them blows up the PPO update.
    def _reward_lin_vel(self):
        return self.lin_vel_mps.square().sum(-1).clamp(max=4.0)

    def _reward_ang_vel(self):
        return self.ang_vel_radps.square().sum(-1).clamp(max=25.0)

    def _reward_tilt(self):
        return 1.0 - self.rot[:, 2, 2]

    def _reward_action(self):
        return self.action.square().sum(-1)

    def _reward_action_rate(self):
        return (self.action - self.prev_action).square().sum(-1)

    def _step_metrics(self) -> dict[str, torch.Tensor]:
        return {"pos_error_m": self.pos_error_m.norm(dim=-1)}

    def summary(self, crashed: np.ndarray, **series: np.ndarray) -> dict:
        return hover_summary(self.cfg, self.spec.control_hz, crashed=crashed, **series)

    # --- curriculum ------------------------------------------------------------------------------
    def _after_iteration(self, stats: dict) -> dict[str, float]:
        """Move the level once `window_fraction * num_envs` episodes ended since the last move, by
        their timeout rate (a rate over a few episodes is noise)."""
        c = self.cfg.curriculum
        if c.enabled and stats.get("count"):
            self._window += torch.tensor([stats["end/timeout"] * stats["count"], stats["count"]], dtype=torch.float64)
            timeouts, count = self._window.tolist()
            if count >= self.num_envs * c.window_fraction:
                rate = timeouts / count
                if rate >= c.promote_timeout_rate:
                    self.curriculum_level = min(1.0, self.curriculum_level + c.step)
                elif rate < c.demote_timeout_rate:
                    self.curriculum_level = max(c.start_level, self.curriculum_level - c.step)
                self._window.zero_()
        return {"curriculum_level": self.curriculum_level}

    def _task_state(self) -> dict[str, torch.Tensor]:
        """What `params` does not determine: rotor thrusts and the curriculum."""
        return {
            "thrust_N": self.rotors.thrust_N,
            "curriculum_level": torch.tensor(self.curriculum_level), "curriculum_window": self._window,
        }

    def _load_task_state(self, state: dict[str, torch.Tensor]) -> None:
        self.rotors.thrust_N.copy_(state["thrust_N"])
        self.curriculum_level = float(state["curriculum_level"])
        self._window.copy_(state["curriculum_window"])
        self._apply_params(self.env_ids)
        self._update_state()

    def close(self) -> None:
        self.backend.close()


# --- measures from a log (replay) ------------------------------------------------------------------
class HoverLogMetrics:
    """hover_summary's measures from a logged rollout (`s2r replay`), streamed per running step instead
    of per episode: the position error |pos - target| (mean, p90, fraction within `success_radius_m`)
    and crashes (the body below `crash_height_m`, each counted once), from the newest frame of the
    observation terms pos_error_b and rot_mat, so they need no sensor topic.

    The shape every task's log metrics share (sim.tasks.Task.log_metrics): built with the logged
    PolicySpec, the task config and `stats(width)`, a streaming statistic of non-negative values
    (replay.dynamics_gap.StreamingStats: `.add((n, width))`, `.n`, `.summary(names)` -> {name: {mean,
    median, p90}}) so memory stays flat however long the log; `add(frames)` with {term: (n, size)}
    each term's newest frame in its own units; `summary()` the metrics; `score(result)` the task's
    sim_score of an `s2r eval` result, which `score_definition` describes."""

    score_definition = "success rate"

    def __init__(self, spec: PolicySpec, cfg: QuadrotorHoverCfg, stats):
        self.cfg = cfg
        self.target_z_m = float((spec.extra.target_pos_m or (0.0, 0.0, 0.0))[2])
        self.err = stats(1)
        self.within = 0
        self.crashes = 0
        self._below = False  # the previous row's, so that a crash across two blocks counts once

    def add(self, frames: dict[str, np.ndarray]) -> None:
        e_b = frames["pos_error_b"]
        rot = frames["rot_mat"].reshape(-1, 3, 3)
        z = self.target_z_m + (rot @ e_b[..., None])[:, 2, 0]
        err = np.linalg.norm(e_b, axis=-1)
        self.within += int((err <= self.cfg.success_radius_m).sum())
        below = z < self.cfg.crash_height_m
        self.crashes += int((below & ~np.concatenate(([self._below], below[:-1]))).sum())
        if len(below):
            self._below = bool(below[-1])
        self.err.add(err[:, None])

    def summary(self) -> dict:
        s = self.err.summary(("e",))["e"]
        return {"mean_pos_error_m": s["mean"], "p90_pos_error_m": s["p90"], "crashes": self.crashes,
                "frac_within_success_radius": self.within / max(self.err.n, 1),
                "definition": f"position error |pos - target| every running step; crash: below {self.cfg.crash_height_m} m"}

    @staticmethod
    def score(result: dict) -> float:
        return float(result["success_rate"])
