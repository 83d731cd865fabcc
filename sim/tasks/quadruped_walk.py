"""quadruped-walk: track a commanded forward, lateral and yaw velocity on flat ground, on any legged
robot (config/robot.py: joints, feet, base body, drive gains).

Joint position targets into PD at 200 Hz physics, policy at 50 Hz. Terms and weights follow
legged_gym's flat-ground Go1/A1 set-up (weights per second, as there).
Actor: IMU angular velocity, projected gravity, command, joint positions relative to the default pose,
joint velocities, last action; all but the command and action with noise (and gyro / encoder bias).
Critic: those without noise or bias, plus base linear velocity, base height, foot contact forces and
every randomized parameter.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from config.validate import ConfigError, SensorNoiseCfg, nonnegative, positive
from deploy.spec import ActionSpec, ObsTerm, PolicySpec, SpecExtra
from sim.joint_env import JointPositionEnv
from sim.robots import RobotModel
from sim.terms import CommandTerm, CurriculumTerm, EventTerm, RewardTerm, TerminationTerm, term_param


@dataclass(frozen=True)
class NoiseCfg(SensorNoiseCfg):
    """Sensor noise standard deviations (uniform noise, as legged_gym adds it)."""

    ang_vel_radps: float = field(default=0.1, metadata=nonnegative())
    gravity: float = field(default=0.03, metadata=nonnegative())
    joint_pos_rad: float = field(default=0.01, metadata=nonnegative())
    joint_vel_radps: float = field(default=0.8, metadata=nonnegative())


@dataclass(frozen=True)
class QuadrupedWalkCfg:
    robot: str = "go1"  # a legged robot: built-in name or robot YAML path (s2r robots)
    episode_s: float = field(default=20.0, metadata=positive())
    action_scale_rad: float = field(default=0.25, metadata=positive())  # joint target = default + scale * action
    eval_settle_s: float = field(default=1.0, metadata=nonnegative())  # after a command change
    model_variants: int = field(default=64, metadata=positive())  # worlds with their own startup-event values
    noise: NoiseCfg = NoiseCfg()
    # (lin_vel_x, lin_vel_y, yaw_rate) at full curriculum level, resampled every 5 s, 10 % standing still;
    # the observed command follows a new draw at up to 2 m/s^2 and 2 rad/s^2 (a full reversal in 1 s), on the robot too
    commands: dict[str, CommandTerm] = field(
        default_factory=lambda: {
            "base_velocity": CommandTerm(
                "velocity_command",
                {
                    "lin_vel_x_mps": (-1.0, 1.0),
                    "lin_vel_y_mps": (-0.6, 0.6),
                    "yaw_rate_radps": (-1.0, 1.0),
                    "standing_fraction": 0.1,
                    "resample_s": 5.0,
                    "max_rate": (2.0, 2.0, 2.0),
                },
            )
        }
    )
    rewards: dict[str, RewardTerm] = field(
        default_factory=lambda: {
            "track_lin_vel": RewardTerm("track_lin_vel_xy_exp", 1.0, {"sigma_mps": 0.5}),
            "track_ang_vel": RewardTerm("track_ang_vel_z_exp", 0.5, {"sigma_radps": 0.5}),
            "lin_vel_z": RewardTerm("base_lin_vel_z_l2", -2.0),
            "ang_vel_xy": RewardTerm("base_ang_vel_xy_l2", -0.05),
            "orientation": RewardTerm("flat_orientation_l2", -1.0),
            "torques": RewardTerm("joint_torques_l2", -2e-4),
            "joint_acc": RewardTerm("joint_acc_l2", -2.5e-7),
            "action_rate": RewardTerm("action_rate_l2", -0.01),
            "feet_air_time": RewardTerm("feet_air_time", 1.0, {"target_s": 0.5}),
            "joint_limits": RewardTerm("joint_pos_limits", -10.0, {"soft_fraction": 0.9}),
            "termination": RewardTerm("termination", -200.0),  # per second: -4 per fall at 50 Hz
        }
    )
    terminations: dict[str, TerminationTerm] = field(
        default_factory=lambda: {
            "fall": TerminationTerm("base_below", {"height_m": 0.15}),  # only the feet collide
            "tilt": TerminationTerm("base_tilted", {"min_up_cos": 0.5}),  # trunk over 60 deg from vertical
        }
    )
    events: dict[str, EventTerm] = field(
        default_factory=lambda: {
            "friction": EventTerm("foot_friction", {"friction": (0.4, 1.25)}),
            "payload": EventTerm("base_payload", {"mass_kg": (-1.0, 2.0), "com_m": 0.05}),
            "gyro_bias": EventTerm("sensor_bias", {"term": "ang_vel_b", "bias": 0.02}),
            "gains": EventTerm(
                "joint_gains", {"kp_scale": (0.8, 1.2), "kd_scale": (0.8, 1.2), "motor_strength": (0.9, 1.1)}
            ),
            "latency": EventTerm("action_latency", {"steps": (0, 1)}),
            "encoder_bias": EventTerm("sensor_bias", {"term": "joint_pos_rel", "bias": 0.01}),
            "push": EventTerm("push_base", {"vel_mps": 0.5, "interval_s": 8.0}),
        }
    )
    # the command ranges widen while the robot tracks well (track_lin_vel over its maximum) and stays up;
    # decided every 256 episodes (~10 iterations), which needs training's spread episodes (curricula.py)
    curricula: dict[str, CurriculumTerm] = field(
        default_factory=lambda: {
            "command_range": CurriculumTerm(
                "reward_share",
                {
                    "reward": "track_lin_vel",
                    "start_level": 0.4,
                    "promote_share": 0.6,  # 0.7 held it at 80 % ~150 iterations (README: A looser curriculum)
                    "promote_timeout_rate": 0.8,
                    "window_episodes": 256,
                },
            )
        }
    )
    critic: tuple[str, ...] = ("base_lin_vel_b", "base_height", "foot_force")


def make_spec(cfg: QuadrupedWalkCfg, robot: RobotModel) -> PolicySpec:
    joints = robot.cfg.joints
    assert joints is not None and robot.joint_low is not None and robot.joint_high is not None
    names, n = joints.names, len(joints.names)
    xyz = ("x", "y", "z")
    return PolicySpec(
        robot=robot.cfg.name,
        task="quadruped-walk",
        control_hz=robot.cfg.control_hz,
        obs=(
            ObsTerm("ang_vel_b", xyz, (0.25,) * 3, unit="rad/s"),
            ObsTerm("projected_gravity", xyz, (1.0,) * 3, unit=""),
            ObsTerm("command", ("lin_vel_x", "lin_vel_y", "yaw_rate"), (2.0, 2.0, 0.25), unit="m/s, m/s, rad/s"),
            ObsTerm("joint_pos_rel", names, (1.0,) * n, unit="rad"),
            ObsTerm("joint_vel", names, (0.05,) * n, unit="rad/s"),
            ObsTerm("last_action", names, (1.0,) * n),
        ),
        action=ActionSpec(
            type="joint_position",
            names=names,
            scale=(cfg.action_scale_rad,) * n,
            offset=tuple(float(x) for x in joints.default_pos_rad),
            clip=10.0,
            low=tuple(float(x) for x in robot.joint_low),
            high=tuple(float(x) for x in robot.joint_high),
            unit="rad",
        ),
        extra=SpecExtra(physics_hz=robot.physics_hz, kp=joints.kp, kd=joints.kd),
    )


class QuadrupedWalkEnv(JointPositionEnv):
    video_camera = "track"

    def __init__(self, cfg: QuadrupedWalkCfg, num_envs: int, device="cpu", seed: int = 0, backend="cpu"):
        self.cfg = cfg
        self._setup(cfg, "legged", make_spec, num_envs, device, seed, backend)
        self._base_q = self.robot.base_qadr
        velocity = [c for c in self.commands.values() if c.reading == "command"]
        if not velocity:
            raise ConfigError("task.commands: quadruped-walk tracks a velocity command; add a velocity_command")
        self._velocity = velocity[0]
        self._read_state()

    def _noise_std_by_term(self) -> dict[str, float]:
        n = self.cfg.noise
        return {
            "ang_vel_b": n.ang_vel_radps,
            "projected_gravity": n.gravity,
            "joint_pos_rel": n.joint_pos_rad,
            "joint_vel": n.joint_vel_radps,
        }

    def _reset_envs(self, env_ids: torch.Tensor) -> None:
        """The default pose with the joints a little perturbed, a random heading."""
        n = len(env_ids)
        u = torch.rand(n, 2, generator=self.generator, device=self.device)
        qpos = self._start_pose((u[:, 1:2] * 2 - 1) * 0.1)
        yaw = (u[:, 0] * 2 - 1) * torch.pi
        qpos[:, self._base_q + 3] = torch.cos(yaw / 2)
        qpos[:, self._base_q + 6] = torch.sin(yaw / 2)
        self.backend.reset(env_ids, qpos.double(), torch.zeros(n, self.backend.model.nv, dtype=torch.float64))
        self._read_state()
        self._reset_joint_state(env_ids)

    def summary(self, lin_vel_error_mps, yaw_rate_error_radps, settled, alive, crashed) -> dict:
        """(steps, episodes) series. Tracking errors are averaged over the steps at least
        `eval_settle_s` after each command change, while the robot is up."""
        cfg = self.cfg
        use = alive & (settled > 0)
        return {
            "mean_lin_vel_error_mps": float(lin_vel_error_mps[use].mean()) if use.any() else float("nan"),
            "mean_yaw_rate_error_radps": float(yaw_rate_error_radps[use].mean()) if use.any() else float("nan"),
            "fall_rate": float(crashed.mean()),
            "success_definition": f"tracking error |v_cmd_xy - v_xy| averaged from {cfg.eval_settle_s} s after each "
            f"command change; fall rate over {cfg.episode_s} s episodes, commands over the full ranges",
        }

    def _step_metrics(self):
        settled = self._velocity.steps_since >= round(self.cfg.eval_settle_s * self.control_hz)
        r = self.readings
        return {
            "lin_vel_error_mps": (r["command"][:, :2] - r["base_lin_vel_b"][:, :2]).norm(dim=-1),
            "yaw_rate_error_radps": (r["command"][:, 2] - r["base_ang_vel_b"][:, 2]).abs(),
            "settled": settled.float(),
        }

    def _task_state(self):
        return self._joint_state()

    def _load_task_state(self, state):
        self._load_joint_state(state)


# --- measures from a log (replay) ------------------------------------------------------------------
TRACKING_ERROR_SCALE_MPS = 0.5  # sim_score: the linear tracking error at which it reaches 0


class WalkLogMetrics:
    """The walk's measures from a logged rollout (`s2r replay`), streamed per running step: the
    yaw-rate tracking error |command yaw rate - gyro z| and falls (the trunk tilted beyond
    acos of the tilt termination's `min_up_cos`, each counted once), from the newest frame of the observation terms. The
    policy does not observe its base velocity, so the linear tracking comes from the log's /cmd_vel
    and /odom: a task with `base_velocity_settle_s` is fed |cmd_vel xy - odometry twist xy| from that
    long after each command change (`add_base_velocity_error`), as `summary` measures it in sim.
    The shape of HoverLogMetrics."""

    score_definition = f"(1 - fall_rate) * max(0, 1 - lin_vel_error / {TRACKING_ERROR_SCALE_MPS} m/s)"

    def __init__(self, spec: PolicySpec, cfg: QuadrupedWalkCfg, stats):
        self.cfg = cfg
        self.fall_tilt_cos = float(term_param(cfg.terminations, "base_tilted", "min_up_cos", -1.0))
        self.base_velocity_settle_s = cfg.eval_settle_s
        self.yaw = stats(1)
        self.lin = stats(1)
        self.falls = 0
        self._fallen = False  # the previous row's, so that a fall across two blocks counts once

    def add(self, frames: dict[str, np.ndarray]) -> None:
        err = np.abs(frames["command"][:, 2] - frames["ang_vel_b"][:, 2])
        fallen = -frames["projected_gravity"][:, 2] < self.fall_tilt_cos
        self.falls += int((fallen & ~np.concatenate(([self._fallen], fallen[:-1]))).sum())
        if len(fallen):
            self._fallen = bool(fallen[-1])
        self.yaw.add(err[:, None])

    def add_base_velocity_error(self, err_mps: np.ndarray) -> None:
        """(n,) |cmd_vel xy - odometry twist xy| of settled samples while the controller ran."""
        self.lin.add(err_mps[:, None])

    def summary(self) -> dict:
        cfg = self.cfg
        out = {
            "mean_yaw_rate_error_radps": self.yaw.summary(("e",))["e"]["mean"],
            "falls": self.falls,
            "mean_lin_vel_error_mps": None,
            "definition": "|yaw-rate command - gyro z| every running step; "
            f"fall: trunk tilted beyond acos({self.fall_tilt_cos}); "
            f"linear tracking |cmd_vel xy - odometry twist xy| from {cfg.eval_settle_s} s after each command change, "
            "when "
            "the bag has /odom and /cmd_vel (the policy does not observe its base velocity)",
        }
        if self.lin.n:
            s = self.lin.summary(("e",))["e"]
            out.update(mean_lin_vel_error_mps=s["mean"], p90_lin_vel_error_mps=s["p90"], lin_vel_samples=self.lin.n)
        return out

    @staticmethod
    def score(result: dict) -> float:
        """1 for a robot that never falls and tracks exactly, 0 from TRACKING_ERROR_SCALE_MPS of error."""
        return (1 - result["fall_rate"]) * max(0.0, 1 - result["mean_lin_vel_error_mps"] / TRACKING_ERROR_SCALE_MPS)
