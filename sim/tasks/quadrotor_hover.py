"""quadrotor-hover: fly to and hold a target position from a random position, velocity and attitude,
on any multirotor robot (config/robot.py: rotors, base body, control rate).

Actor: noisy position error and linear velocity (body frame), rotation matrix, angular velocity, recent
actions. Body-frame errors make the map from observation to rotor commands independent of yaw.
Critic: the actor's observations, the same quantities without noise, rotor thrusts, and every
randomized parameter (which includes the disturbance).
Mass is randomized by scaling every applied force by 1/mass_scale (sim.terms.events.mass_scale): for a
free-flying rigid body with uniformly scaled inertia this is exactly the dynamics of the heavier body,
and keeps one shared MjModel (see sim/backends/mujoco_cpu.py for why).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import cast

import numpy as np
import torch

from config.robot import GRAVITY_MPS2
from config.validate import SensorNoiseCfg, noise_distribution, nonnegative, positive
from deploy.rotations import tilt_quat
from deploy.spec import ActionSpec, ObsTerm, PolicySpec, SpecExtra
from sim.actuators import RotorModel
from sim.backends import make_backend
from sim.env import BatchedEnv
from sim.readings import robot_readings
from sim.robots import RobotModel, find_robot, robot_model
from sim.terms import CommandTerm, CurriculumTerm, EventTerm, RewardTerm, TerminationTerm, term_param


@dataclass(frozen=True)
class InitCfg:
    """Initial-state ranges at full curriculum level `init_state` (uniform, symmetric)."""

    pos_m: float = field(default=0.5, metadata=nonnegative())
    lin_vel_mps: float = field(default=0.5, metadata=nonnegative())
    tilt_rad: float = field(default=0.5, metadata=nonnegative())
    ang_vel_radps: float = field(default=1.0, metadata=nonnegative())


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
    success_radius_m: float = field(default=0.1, metadata=positive())
    success_after_s: float = field(default=2.0, metadata=nonnegative())
    init: InitCfg = InitCfg()
    noise: NoiseCfg = NoiseCfg()
    rewards: dict[str, RewardTerm] = field(
        default_factory=lambda: {
            "alive": RewardTerm("alive", 1.0),
            "pos_error": RewardTerm("base_pos_error", -0.5),
            "pos_precision": RewardTerm("base_pos_precision", 2.0, {"radius_m": 0.1}),
            "lin_vel": RewardTerm("base_lin_vel_l2", -0.05, {"cap": 4.0}),
            "ang_vel": RewardTerm("base_ang_vel_l2", -0.02, {"cap": 25.0}),
            "tilt": RewardTerm("upright_error", -0.1),
            "action": RewardTerm("action_l2", -0.01),
            "action_rate": RewardTerm("action_rate_l2", -0.02),
        }
    )
    terminations: dict[str, TerminationTerm] = field(
        default_factory=lambda: {
            "crash": TerminationTerm("base_below", {"height_m": 0.05}),
            "out_of_bounds": TerminationTerm("base_far_from_target", {"max_error_m": 1.0}),
        }
    )
    # per-episode parameters, resampled at every reset; mass_scale before base_force (see events.base_force)
    events: dict[str, EventTerm] = field(
        default_factory=lambda: {
            "mass": EventTerm("mass_scale", {"scale": (0.85, 1.15)}),
            "rotors": EventTerm("rotor_params", {"thrust_scale": (0.9, 1.1), "motor_tau_s": (0.02, 0.08)}),
            "latency": EventTerm("action_latency", {"steps": (0, 2)}),
            "position_bias": EventTerm("sensor_bias", {"term": "pos_error_b", "bias": 0.01}),
            "gyro_bias": EventTerm("sensor_bias", {"term": "ang_vel_b", "bias": 0.02}),
            "disturbance": EventTerm("base_force", {"force_N": 0.02}),
        }
    )
    # the initial-state ranges grow while most episodes survive to the time limit
    curricula: dict[str, CurriculumTerm] = field(
        default_factory=lambda: {
            "init_state": CurriculumTerm(
                "timeout_rate",
                {
                    "start_level": 0.3,
                    "step": 0.1,
                    "promote_timeout_rate": 0.8,
                    "demote_timeout_rate": 0.4,
                    "window_episodes": 64,
                },
            )
        }
    )
    commands: dict[str, CommandTerm] = field(
        default_factory=dict
    )  # none: the target is fixed (target_pos_m, in the PolicySpec)
    critic: tuple[str, ...] = ("rotor_thrust",)  # privileged terms (sim/terms/observations.py), then every parameter


def hover_thrust_N(mass_kg: float, num_rotors: int) -> float:
    """Per-rotor thrust that holds the nominal body aloft."""
    return mass_kg * GRAVITY_MPS2 / num_rotors


def make_spec(cfg: QuadrotorHoverCfg, robot: RobotModel) -> PolicySpec:
    rotors = robot.cfg.rotors
    assert rotors is not None
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
            physics_hz=robot.physics_hz,
            target_pos_m=tuple(cfg.target_pos_m),
            success=f"within {cfg.success_radius_m} m of the target from {cfg.success_after_s} s after start "
            "until the episode ends",
        ),
    )


def hover_summary(
    cfg: QuadrotorHoverCfg, control_hz: float, pos_error_m: np.ndarray, alive: np.ndarray, crashed: np.ndarray
) -> dict:
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
        "final_pos_error_m": float(np.nanmean(np.where(survived, pos_error_m[-1], np.nan)))
        if survived.any()
        else float("nan"),
        "success_definition": f"within {cfg.success_radius_m} m of the target at every step from "
        f"{cfg.success_after_s} s after start until the {cfg.episode_s} s episode ends, without a crash",
    }


class QuadrotorHoverEnv(BatchedEnv):
    curriculum_levels = ("init_state",)

    def __init__(self, cfg: QuadrotorHoverCfg, num_envs: int, device="cpu", seed: int = 0, backend="cpu"):
        self.cfg = cfg
        self.robot = robot = robot_model(find_robot(cfg.robot), kind="multirotor")
        rotors = robot.cfg.rotors
        assert rotors is not None and robot.rotor_ctrl is not None
        self.backend = make_backend(backend, robot.model, num_envs, device=device)
        self.decimation = robot.decimation
        self.mass_kg = robot.mass_kg
        self.num_rotors = len(rotors.names)
        self.spec = make_spec(cfg, robot)
        self.max_episode_steps = round(cfg.episode_s * robot.cfg.control_hz)
        self.rotors = RotorModel(num_envs, self.num_rotors, 1.0 / robot.cfg.control_hz, rotors.max_thrust_N, device)
        self.target_pos_m = torch.tensor(cfg.target_pos_m, device=device)
        super().__init__(num_envs, device, seed)
        # the rotors' ctrl columns: all of them (one copy) unless the model has actuators of its own
        nu = robot.model.nu
        self._rotor_ctrl = (
            None if np.array_equal(robot.rotor_ctrl, np.arange(nu)) else torch.as_tensor(robot.rotor_ctrl)
        )
        self._update_state()
        init = cfg.init
        self._init_half_range = torch.tensor(
            (init.pos_m,) * 3 + (init.lin_vel_mps,) * 3 + (init.ang_vel_radps,) * 3, device=self.device
        )

    def _noise_std_by_term(self) -> dict[str, float]:
        n = self.cfg.noise
        return {"pos_error_b": n.pos_m, "rot_mat": n.rot, "lin_vel_b": n.lin_vel_mps, "ang_vel_b": n.ang_vel_radps}

    # --- state -----------------------------------------------------------------------------------
    def _update_state(self, env_ids: torch.Tensor | None = None) -> None:
        """The robot's readings (float32) from the backend: all envs, or just `env_ids` after their reset."""
        qpos, qvel = self.backend.qpos, self.backend.qvel
        if env_ids is None:
            r = robot_readings(
                self.robot, qpos.to(self.device, torch.float32), qvel.to(self.device, torch.float32), None
            )
            self.readings = {**r, "target_pos_w": self.target_pos_m.expand(self.num_envs, 3)}
            return
        cpu_ids = env_ids.to(qpos.device)
        r = robot_readings(
            self.robot, qpos[cpu_ids].to(self.device, torch.float32), qvel[cpu_ids].to(self.device, torch.float32), None
        )
        for k, v in r.items():
            self.readings[k][env_ids] = v

    def _physics_ok(self) -> torch.Tensor:
        return self.backend.physics_ok().to(self.device)

    # --- task pieces -----------------------------------------------------------------------------
    def _reset_envs(self, env_ids: torch.Tensor) -> None:
        """Position, linear and angular velocity uniform in +-range, attitude tilted, the ranges scaled
        by the curriculum; the rotors spinning at the thrust that holds this env's body aloft."""
        n = len(env_ids)
        level = self.level("init_state")
        u = torch.rand(n, 9 + 3, generator=self.generator, device=self.device)
        state = (u[:, :9] * 2 - 1) * (self._init_half_range * level)
        quat = cast(torch.Tensor, tilt_quat(u[:, 9:12], self.cfg.init.tilt_rad * level))  # torch in, torch out
        qpos = torch.cat((self.target_pos_m + state[:, :3], quat), -1)
        self.backend.reset(env_ids, qpos, state[:, 3:9])
        hover_N = (
            hover_thrust_N(self.mass_kg, self.num_rotors)
            * self.param("mass_scale")[env_ids]
            / self.param("thrust_scale")[env_ids]
        )
        self.rotors.reset(env_ids, hover_N[:, None].expand(n, self.num_rotors))
        self._update_state(env_ids)

    def _apply_command(self, command: torch.Tensor) -> None:
        if self.physics_step_hook is not None:  # once per command: the motor model runs at the control rate
            command = self.physics_step_hook(command)
        thrust_N = self.rotors.step(command) * self.force_scale
        if self._rotor_ctrl is None:
            self.backend.ctrl.copy_(thrust_N)
        else:
            self.backend.ctrl[:, self._rotor_ctrl] = thrust_N.to(self.backend.ctrl)
        self.backend.step(self.decimation)
        self._update_state()

    def _step_metrics(self) -> dict[str, torch.Tensor]:
        r = self.readings
        return {"pos_error_m": (r["base_pos_w"] - r["target_pos_w"]).norm(dim=-1)}

    def summary(self, crashed: np.ndarray, **series: np.ndarray) -> dict:
        return hover_summary(self.cfg, self.spec.control_hz, crashed=crashed, **series)

    def _task_state(self) -> dict[str, torch.Tensor]:
        """What `params` does not determine: the rotors' thrust."""
        return {"thrust_N": self.rotors.thrust_N}

    def _load_task_state(self, state: dict[str, torch.Tensor]) -> None:
        self.rotors.thrust_N.copy_(state["thrust_N"])
        self._update_state()

    def close(self) -> None:
        self.backend.close()


# --- measures from a log (replay) ------------------------------------------------------------------
class HoverLogMetrics:
    """hover_summary's measures from a logged rollout (`s2r replay`), streamed per running step instead
    of per episode: the position error |pos - target| (mean, p90, fraction within `success_radius_m`)
    and crashes (the body below the crash termination's height, each counted once), from the newest frame of the
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
        self.crash_height_m = float(term_param(cfg.terminations, "base_below", "height_m", -np.inf))
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
        below = z < self.crash_height_m
        self.crashes += int((below & ~np.concatenate(([self._below], below[:-1]))).sum())
        if len(below):
            self._below = bool(below[-1])
        self.err.add(err[:, None])

    def summary(self) -> dict:
        s = self.err.summary(("e",))["e"]
        return {
            "mean_pos_error_m": s["mean"],
            "p90_pos_error_m": s["p90"],
            "crashes": self.crashes,
            "frac_within_success_radius": self.within / max(self.err.n, 1),
            "definition": f"position error |pos - target| every running step; crash: below {self.crash_height_m} m",
        }

    @staticmethod
    def score(result: dict) -> float:
        return float(result["success_rate"])
