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

from deploy.rotations import projected_gravity
from deploy.spec import ActionSpec, ObsTerm, PolicySpec, SpecExtra
from config.validate import SensorNoiseCfg, nonnegative, positive
from sim.joint_env import ActuatorRandomizationCfg, JointPositionEnv
from sim.robots import RobotModel


@dataclass(frozen=True)
class CommandCfg:
    """Velocity commands at full curriculum level, uniform in (low, high), resampled every `resample_s`."""

    lin_vel_x_mps: tuple[float, float] = (-1.0, 1.0)
    lin_vel_y_mps: tuple[float, float] = (-0.6, 0.6)
    yaw_rate_radps: tuple[float, float] = (-1.0, 1.0)
    resample_s: float = field(default=5.0, metadata=positive())
    standing_fraction: float = field(default=0.1, metadata=nonnegative())  # commands of exactly zero


@dataclass(frozen=True)
class CurriculumCfg:
    """Command ranges scale with `level`, raised while the tracking reward is a large share of its maximum."""

    enabled: bool = True
    start_level: float = field(default=0.4, metadata=positive())
    step: float = field(default=0.1, metadata=positive())
    promote_tracking: float = 0.7  # track_lin_vel earned / its maximum, over the window's episodes
    promote_timeout_rate: float = 0.8  # share of the window's episodes that did not fall


@dataclass(frozen=True)
class RandomizationCfg:
    friction: tuple[float, float] = (0.4, 1.25)
    payload_kg: tuple[float, float] = (-1.0, 2.0)  # added to the base body
    payload_com_m: float = field(default=0.05, metadata=nonnegative())  # base CoM shift per axis
    model_variants: int = field(default=64, metadata=positive())  # sampled (friction, payload) worlds
    actuators: ActuatorRandomizationCfg = ActuatorRandomizationCfg()
    gyro_bias_radps: float = field(default=0.02, metadata=nonnegative())
    push_interval_s: float = field(default=8.0, metadata=positive())
    push_vel_mps: float = field(default=0.5, metadata=nonnegative())  # added base velocity, per axis


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
    fall_height_m: float = 0.15  # base centre below this: fallen (only the feet collide)
    fall_tilt_cos: float = 0.5  # trunk z axis more than 60 deg from vertical: fallen
    tracking_sigma_mps: float = field(default=0.5, metadata=positive())  # exp kernel width
    air_time_target_s: float = field(default=0.5, metadata=positive())
    soft_joint_limit: float = field(default=0.9, metadata=positive())  # fraction of the range
    eval_settle_s: float = field(default=1.0, metadata=nonnegative())  # after a command change
    commands: CommandCfg = CommandCfg()
    curriculum: CurriculumCfg = CurriculumCfg()
    randomization: RandomizationCfg = RandomizationCfg()
    noise: NoiseCfg = NoiseCfg()
    reward: dict[str, float] = field(
        default_factory=lambda: {
            "track_lin_vel": 1.0,
            "track_ang_vel": 0.5,
            "lin_vel_z": -2.0,
            "ang_vel_xy": -0.05,
            "orientation": -1.0,
            "torques": -2e-4,
            "joint_acc": -2.5e-7,
            "action_rate": -0.01,
            "feet_air_time": 1.0,
            "joint_limits": -10.0,
            "termination": -200.0,  # per second: -4 per fall at 50 Hz
        }
    )


VARIANT_PARAMS = ("friction", "payload_kg", "payload_com_x_m", "payload_com_y_m", "payload_com_z_m")
# columns of `params`: model-variant parameters, gyro bias, then JointPositionEnv's actuator parameters
VARIANT, GYRO_BIAS, ACTUATOR = slice(0, 5), slice(5, 8), slice(8, None)


def make_spec(cfg: QuadrupedWalkCfg, robot: RobotModel) -> PolicySpec:
    joints = robot.cfg.joints
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
    variant_param_names = VARIANT_PARAMS  # baked into the model variants, not settable per env
    video_camera = "track"

    def __init__(self, cfg: QuadrupedWalkCfg, num_envs: int, device="cpu", seed: int = 0, backend="mujoco"):
        self.cfg = cfg
        dr = cfg.randomization
        task_params = VARIANT_PARAMS + ("gyro_bias_x_radps", "gyro_bias_y_radps", "gyro_bias_z_radps")
        self._setup(cfg, "legged", make_spec, lambda joints: task_params, num_envs, device, seed, backend)
        dev = self.device
        robot = self.robot
        self.trunk = robot.base_body
        self._base_q = slice(robot.base_qadr, robot.base_qadr + 7)
        self._base_v = slice(robot.base_dadr, robot.base_dadr + 6)
        self.touch_adr = torch.as_tensor(robot.touch_adr)
        n_feet, n_j = len(robot.touch_adr), len(self.joint_names)
        self.dt_s = 1.0 / self.control_hz
        self.command = torch.zeros(num_envs, 3, device=dev)
        self.feet_air_time = torch.zeros(num_envs, n_feet, device=dev)
        self.foot_force_N = torch.zeros(num_envs, n_feet, device=dev)
        self.prev_joint_vel = torch.zeros(num_envs, n_j, device=dev)
        self.curriculum_level = cfg.curriculum.start_level if cfg.curriculum.enabled else 1.0
        self._resample_steps = max(1, round(cfg.commands.resample_s * self.control_hz))
        self._push_steps = max(1, round(dr.push_interval_s * self.control_hz))
        self._steps_since_command = torch.zeros(num_envs, dtype=torch.long, device=dev)
        self._window = torch.zeros(4, dtype=torch.float64)  # (tracked, best, timeouts, episodes) since the last decision
        self._gyro_bias_cols = self.bias_columns("ang_vel_b")
        c = cfg.commands
        self._cmd_low = torch.tensor((c.lin_vel_x_mps[0], c.lin_vel_y_mps[0], c.yaw_rate_radps[0]), device=dev)
        self._cmd_high = torch.tensor((c.lin_vel_x_mps[1], c.lin_vel_y_mps[1], c.yaw_rate_radps[1]), device=dev)
        self._variant_params = self._randomize_variants()
        self._soft_low, self._soft_high = self._soft_limits()
        self._read_state()

    def _noise_std_by_term(self) -> dict[str, float]:
        n = self.cfg.noise
        return {"ang_vel_b": n.ang_vel_radps, "projected_gravity": n.gravity, "joint_pos_rel": n.joint_pos_rad,
                "joint_vel": n.joint_vel_radps}

    def _operator_readings(self) -> dict[str, torch.Tensor]:
        return {"command": self.command}

    # --- randomization ---------------------------------------------------------------------------
    def _randomize_variants(self) -> torch.Tensor:
        """Sample (friction, payload mass, payload CoM) per model variant and write them into the
        variants; returns `(num_variants, 5)` in VARIANT_PARAMS order."""
        dr, b, model = self.cfg.randomization, self.backend, self.backend.model
        k = len(b.variants)
        u = torch.rand(k, 5, generator=self.generator, device=self.device).cpu()
        lo = torch.tensor([dr.friction[0], dr.payload_kg[0]] + [-dr.payload_com_m] * 3)
        hi = torch.tensor([dr.friction[1], dr.payload_kg[1]] + [dr.payload_com_m] * 3)
        p = lo + u * (hi - lo)
        if k == 1:  # one shared model: nominal physics
            p = torch.tensor([[float(model.geom_friction[self.robot.floor_geom, 0]), 0.0, 0.0, 0.0, 0.0]])
        feet = list(self.robot.foot_geoms) + [self.robot.floor_geom]
        for m, row in zip(b.variants, p.tolist()):
            m.geom_friction[feet, 0] = row[0]  # MuJoCo takes the larger of the two geoms' friction
            m.body_mass[self.trunk] = model.body_mass[self.trunk] + row[1]
            m.body_ipos[self.trunk] = model.body_ipos[self.trunk] + row[2:5]
        return p.to(self.device)

    def _soft_limits(self):
        mid = (torch.tensor(self.joint_low) + torch.tensor(self.joint_high)) / 2
        half = (torch.tensor(self.joint_high) - torch.tensor(self.joint_low)) / 2 * self.cfg.soft_joint_limit
        return (mid - half).to(self.device), (mid + half).to(self.device)

    # --- state -----------------------------------------------------------------------------------
    def _read_state(self) -> None:
        super()._read_state()
        r = self.readings
        self.base_height_m = r["base_pos_w"][:, 2]
        self.rot, self.lin_vel_b, self.ang_vel_b = r["base_rotmat"], r["base_lin_vel_b"], r["base_ang_vel_b"]
        self.projected_gravity = projected_gravity(self.rot)
        self.foot_force_N = r["foot_force_N"]

    def _apply_command(self, target_rad: torch.Tensor) -> None:
        self.prev_joint_vel = self.joint_vel
        super()._apply_command(target_rad)
        self._steps_since_command += 1
        resample = (self.episode_step % self._resample_steps == self._resample_steps - 1).nonzero().squeeze(-1)
        if resample.numel():
            self._sample_commands(resample)
        self._push()

    def _push(self) -> None:
        """Random base velocity kicks, as legged_gym's push_robots, every push interval of an episode."""
        v = self.cfg.randomization.push_vel_mps
        ids = (self.episode_step % self._push_steps == self._push_steps - 1).nonzero().squeeze(-1)
        if v > 0 and ids.numel():
            kick = (torch.rand(len(ids), 2, generator=self.generator, device=self.device) * 2 - 1) * v
            cpu_ids = ids.to(self.backend.qvel.device)
            self.backend.qvel[cpu_ids, self._base_v.start : self._base_v.start + 2] += kick.to(self.backend.qvel)

    def _sample_commands(self, env_ids: torch.Tensor) -> None:
        c = self.cfg.commands
        n = len(env_ids)
        u = torch.rand(n, 4, generator=self.generator, device=self.device)
        cmd = (self._cmd_low + u[:, :3] * (self._cmd_high - self._cmd_low)) * self.curriculum_level
        cmd[u[:, 3] < c.standing_fraction] = 0.0
        self.command[env_ids] = cmd
        self._steps_since_command[env_ids] = 0

    def _reset_envs(self, env_ids: torch.Tensor) -> None:
        n = len(env_ids)
        dev = self.device
        dr = self.cfg.randomization
        variant = self._sample_variants(env_ids)
        u = torch.rand(n, 5, generator=self.generator, device=dev)
        p = torch.cat(
            (self._variant_params[variant], (u[:, :3] * 2 - 1) * dr.gyro_bias_radps, self._sample_actuator_params(n, dr.actuators)),
            dim=-1,
        )
        self.params[env_ids] = p
        self._apply_params(env_ids)
        # start at the default pose with the joints a little perturbed, random heading
        qpos = self._start_pose((u[:, 4:5] * 2 - 1) * 0.1)
        yaw = (u[:, 3] * 2 - 1) * torch.pi
        q0 = self._base_q.start
        qpos[:, q0 + 3] = torch.cos(yaw / 2)
        qpos[:, q0 + 6] = torch.sin(yaw / 2)
        self.backend.reset(env_ids, qpos.double(), torch.zeros(n, self.backend.model.nv, dtype=torch.float64))
        self._sample_commands(env_ids)
        self.feet_air_time[env_ids] = 0.0
        self._read_state()
        self.foot_force_N[env_ids] = 0.0  # the touch and torque sensors report from the next physics step
        self.prev_joint_vel[env_ids] = 0.0
        self.torque[env_ids] = 0.0

    def _apply_params(self, env_ids) -> None:
        p = self.params[env_ids]
        self._apply_actuator_params(env_ids, p[:, ACTUATOR])
        self.sensor_bias[env_ids, self._gyro_bias_cols] = p[:, GYRO_BIAS]

    # --- observations ----------------------------------------------------------------------------
    def _privileged(self):
        return torch.cat(
            (self.lin_vel_b, self.base_height_m[:, None], self.foot_force_N / 50.0, self.params), dim=-1
        )

    def _terminations(self):
        return {
            "fall": (self.base_height_m < self.cfg.fall_height_m) | (-self.projected_gravity[:, 2] < self.cfg.fall_tilt_cos),
        }

    # --- rewards (weights per second, in cfg.reward) ----------------------------------------------
    def _reward_track_lin_vel(self):
        err = (self.command[:, :2] - self.lin_vel_b[:, :2]).square().sum(-1)
        return torch.exp(-err / self.cfg.tracking_sigma_mps**2)

    def _reward_track_ang_vel(self):
        err = (self.command[:, 2] - self.ang_vel_b[:, 2]).square()
        return torch.exp(-err / self.cfg.tracking_sigma_mps**2)

    def _reward_lin_vel_z(self):
        return self.lin_vel_b[:, 2].square()

    def _reward_ang_vel_xy(self):
        return self.ang_vel_b[:, :2].square().sum(-1)

    def _reward_orientation(self):
        return self.projected_gravity[:, :2].square().sum(-1)

    def _reward_torques(self):
        return self.torque.square().sum(-1)

    def _reward_joint_acc(self):
        return ((self.joint_vel - self.prev_joint_vel) / self.dt_s).square().sum(-1)

    def _reward_action_rate(self):
        return (self.action - self.prev_action).square().sum(-1)

    def _reward_feet_air_time(self):
        """Reward steps that last about `air_time_target_s` (legged_gym), while asked to move."""
        contact = self.foot_force_N > 1.0
        first_contact = (self.feet_air_time > 0) & contact
        self.feet_air_time += self.dt_s
        r = ((self.feet_air_time - self.cfg.air_time_target_s) * first_contact).sum(-1)
        self.feet_air_time *= ~contact
        return r * (self.command[:, :2].norm(dim=-1) > 0.1)

    def _reward_joint_limits(self):
        return ((self._soft_low - self.joint_pos).clamp(min=0) + (self.joint_pos - self._soft_high).clamp(min=0)).sum(-1)

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
        settled = self._steps_since_command >= round(self.cfg.eval_settle_s * self.control_hz)
        return {
            "lin_vel_error_mps": (self.command[:, :2] - self.lin_vel_b[:, :2]).norm(dim=-1),
            "yaw_rate_error_radps": (self.command[:, 2] - self.ang_vel_b[:, 2]).abs(),
            "settled": settled.float(),
        }

    # --- curriculum ------------------------------------------------------------------------------
    def _after_iteration(self, stats: dict) -> dict[str, float]:
        """Widen the command ranges by `step` once `num_envs` episodes have ended since the last move,
        if they tracked well (track_lin_vel over its maximum) and mostly did not fall."""
        c = self.cfg.curriculum
        if c.enabled and stats.get("count"):
            n = stats["count"]
            self._window += torch.tensor(
                [stats["reward/track_lin_vel"] * n, self.reward_weights["track_lin_vel"] * stats["length_s"] * n, stats["end/timeout"] * n, n],
                dtype=torch.float64,
            )
            tracked, best, timeouts, count = self._window.tolist()
            if count >= self.num_envs:
                if best > 0 and tracked / best >= c.promote_tracking and timeouts / count >= c.promote_timeout_rate:
                    self.curriculum_level = min(1.0, self.curriculum_level + c.step)
                self._window.zero_()
        return {"curriculum_level": self.curriculum_level}

    def _task_state(self):
        return {
            "command": self.command, "feet_air_time": self.feet_air_time, "foot_force_N": self.foot_force_N,
            "prev_joint_vel": self.prev_joint_vel, "steps_since_command": self._steps_since_command,
            "torque": self.torque, "curriculum_level": torch.tensor(self.curriculum_level),
            "curriculum_window": self._window,
        }

    def _load_task_state(self, state):
        self._read_state()  # then the sensors the saved state holds (the backend keeps no sensor data)
        for k in ("command", "feet_air_time", "foot_force_N", "prev_joint_vel", "torque"):
            getattr(self, k).copy_(state[k])
        self._steps_since_command.copy_(state["steps_since_command"])
        self.curriculum_level = float(state["curriculum_level"])
        self._window.copy_(state["curriculum_window"])
        self._apply_params(self.env_ids)


# --- measures from a log (replay) ------------------------------------------------------------------
TRACKING_ERROR_SCALE_MPS = 0.5  # sim_score: the linear tracking error at which it reaches 0


class WalkLogMetrics:
    """The walk's measures from a logged rollout (`s2r replay`), streamed per running step: the
    yaw-rate tracking error |command yaw rate - gyro z| and falls (the trunk tilted beyond
    acos(`fall_tilt_cos`), each counted once), from the newest frame of the observation terms. The
    policy does not observe its base velocity, so the linear tracking comes from the log's /cmd_vel
    and /odom: a task with `base_velocity_settle_s` is fed |cmd_vel xy - odometry twist xy| from that
    long after each command change (`add_base_velocity_error`), as `summary` measures it in sim.
    The shape of HoverLogMetrics."""

    score_definition = f"(1 - fall_rate) * max(0, 1 - lin_vel_error / {TRACKING_ERROR_SCALE_MPS} m/s)"

    def __init__(self, spec: PolicySpec, cfg: QuadrupedWalkCfg, stats):
        self.cfg = cfg
        self.base_velocity_settle_s = cfg.eval_settle_s
        self.yaw = stats(1)
        self.lin = stats(1)
        self.falls = 0
        self._fallen = False  # the previous row's, so that a fall across two blocks counts once

    def add(self, frames: dict[str, np.ndarray]) -> None:
        err = np.abs(frames["command"][:, 2] - frames["ang_vel_b"][:, 2])
        fallen = -frames["projected_gravity"][:, 2] < self.cfg.fall_tilt_cos
        self.falls += int((fallen & ~np.concatenate(([self._fallen], fallen[:-1]))).sum())
        if len(fallen):
            self._fallen = bool(fallen[-1])
        self.yaw.add(err[:, None])

    def add_base_velocity_error(self, err_mps: np.ndarray) -> None:
        """(n,) |cmd_vel xy - odometry twist xy| of settled samples while the controller ran."""
        self.lin.add(err_mps[:, None])

    def summary(self) -> dict:
        cfg = self.cfg
        out = {"mean_yaw_rate_error_radps": self.yaw.summary(("e",))["e"]["mean"], "falls": self.falls, "mean_lin_vel_error_mps": None,
               "definition": f"|yaw-rate command - gyro z| every running step; fall: trunk tilted beyond acos({cfg.fall_tilt_cos}); "
               f"linear tracking |cmd_vel xy - odometry twist xy| from {cfg.eval_settle_s} s after each command change, when "
               "the bag has /odom and /cmd_vel (the policy does not observe its base velocity)"}
        if self.lin.n:
            s = self.lin.summary(("e",))["e"]
            out.update(mean_lin_vel_error_mps=s["mean"], p90_lin_vel_error_mps=s["p90"], lin_vel_samples=self.lin.n)
        return out

    @staticmethod
    def score(result: dict) -> float:
        """1 for a robot that never falls and tracks exactly, 0 from TRACKING_ERROR_SCALE_MPS of error."""
        return (1 - result["fall_rate"]) * max(0.0, 1 - result["mean_lin_vel_error_mps"] / TRACKING_ERROR_SCALE_MPS)
