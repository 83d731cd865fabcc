"""arm-reach: bring the end effector of any arm robot (config/robot.py: joints, end-effector site,
drive gains) to a random target position.

Joint position targets into PD at 250 Hz physics, policy at 50 Hz. Terms follow Isaac Lab's reach task.
Actor: joint positions relative to the default pose and joint velocities (noisy, encoder offsets),
the target position in the base frame, last action. Critic: those without noise, the true
end-effector pose, and every randomized parameter (joint damping, friction, armature, payload,
gains, latency, encoder offsets).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from config.validate import SensorNoiseCfg, nonnegative, positive
from deploy.spec import ActionSpec, ObsTerm, PolicySpec, SpecExtra
from sim.joint_env import JointPositionEnv
from sim.robots import RobotModel
from sim.terms import CommandTerm, CurriculumTerm, EventTerm, RewardTerm, TerminationTerm


@dataclass(frozen=True)
class NoiseCfg(SensorNoiseCfg):
    joint_pos_rad: float = field(default=0.002, metadata=nonnegative())
    joint_vel_radps: float = field(default=0.02, metadata=nonnegative())


@dataclass(frozen=True)
class ArmReachCfg:
    robot: str = "ur5e"  # an arm: built-in name or robot YAML path (s2r robots)
    episode_s: float = field(default=3.0, metadata=positive())
    action_scale_rad: float = field(default=1.0, metadata=positive())  # joint target = default + scale * action
    success_radius_m: float = field(default=0.02, metadata=positive())
    model_variants: int = field(default=64, metadata=positive())  # worlds with their own startup-event values
    noise: NoiseCfg = NoiseCfg()
    # one target per episode, uniform in a box (base frame)
    commands: dict[str, CommandTerm] = field(
        default_factory=lambda: {
            "target": CommandTerm(
                "position_target", {"center_m": (-0.45, -0.13, 0.35), "half_extent_m": (0.2, 0.25, 0.15)}
            )
        }
    )
    rewards: dict[str, RewardTerm] = field(
        default_factory=lambda: {
            "ee_pos_error": RewardTerm("ee_pos_error", -1.0),
            "ee_pos_precision": RewardTerm("ee_pos_precision", 1.0, {"radius_m": 0.05}),
            "action_rate": RewardTerm("action_rate_l2", -0.005),
            "joint_vel": RewardTerm("joint_vel_l2", -0.001),
        }
    )
    terminations: dict[str, TerminationTerm] = field(default_factory=dict)
    events: dict[str, EventTerm] = field(
        default_factory=lambda: {
            "joints": EventTerm(
                "joint_dynamics",
                {"damping_scale": (0.5, 2.0), "frictionloss_Nm": (0.0, 0.5), "armature_scale": (0.9, 1.1)},
            ),
            "payload": EventTerm("payload_mass", {"mass_kg": (0.0, 1.0)}),
            "gains": EventTerm(
                "joint_gains", {"kp_scale": (0.9, 1.1), "kd_scale": (0.9, 1.1), "motor_strength": (0.95, 1.05)}
            ),
            "latency": EventTerm("action_latency", {"steps": (0, 1)}),
            "encoder_bias": EventTerm("sensor_bias", {"term": "joint_pos_rel", "bias": 0.002}),
        }
    )
    curricula: dict[str, CurriculumTerm] = field(default_factory=dict)  # none: the task reads no level
    critic: tuple[str, ...] = ("ee_pos", "ee_quat", "ee_to_target")


def make_spec(cfg: ArmReachCfg, robot: RobotModel) -> PolicySpec:
    joints = robot.cfg.joints
    assert joints is not None and robot.joint_low is not None and robot.joint_high is not None
    names, n = joints.names, len(joints.names)
    return PolicySpec(
        robot=robot.cfg.name,
        task="arm-reach",
        control_hz=robot.cfg.control_hz,
        obs=(
            ObsTerm("joint_pos_rel", names, (1.0,) * n, unit="rad"),
            ObsTerm("joint_vel", names, (0.1,) * n, unit="rad/s"),
            ObsTerm("target_pos", ("x", "y", "z"), (2.0,) * 3, unit="m"),
            ObsTerm("last_action", names, (1.0,) * n),
        ),
        action=ActionSpec(
            type="joint_position",
            names=names,
            scale=(cfg.action_scale_rad,) * n,
            offset=tuple(float(x) for x in joints.default_pos_rad),
            clip=3.0,
            low=tuple(float(x) for x in robot.joint_low),
            high=tuple(float(x) for x in robot.joint_high),
            unit="rad",
        ),
        extra=SpecExtra(
            physics_hz=robot.physics_hz,
            kp=joints.kp,
            kd=joints.kd,
            success=f"end effector within {cfg.success_radius_m} m of the target at the end of the episode",
        ),
    )


class ArmReachEnv(JointPositionEnv):
    video_camera = "front"

    def __init__(self, cfg: ArmReachCfg, num_envs: int, device="cpu", seed: int = 0, backend="cpu"):
        self.cfg = cfg
        self._setup(cfg, "arm", make_spec, num_envs, device, seed, backend)
        self._read_state()

    def _noise_std_by_term(self) -> dict[str, float]:
        return {"joint_pos_rel": self.cfg.noise.joint_pos_rad, "joint_vel": self.cfg.noise.joint_vel_radps}

    def _reset_envs(self, env_ids: torch.Tensor) -> None:
        """The default pose with the joints perturbed. The end-effector sensors are refreshed by the next
        physics step; the reset envs' reward starts there."""
        n = len(env_ids)
        u = torch.rand(n, len(self.joint_names), generator=self.generator, device=self.device)
        qpos = self._start_pose((u * 2 - 1) * 0.2)
        self.backend.reset(env_ids, qpos.double(), torch.zeros(n, self.backend.model.nv, dtype=torch.float64))
        self._read_state()
        self._reset_joint_state(env_ids)

    def _step_metrics(self):
        r = self.readings
        return {"ee_distance_m": (r["target_pos_w"] - r["ee_pos_w"]).norm(dim=-1)}

    def summary(self, ee_distance_m, alive, crashed) -> dict:
        """Success: end effector within `success_radius_m` of the target at the end of the episode."""
        cfg = self.cfg
        final = ee_distance_m[-1]
        return {
            "success_rate": float(((final <= cfg.success_radius_m) & ~crashed).mean()),
            "mean_final_distance_m": float(final.mean()),
            "median_final_distance_m": float(np.median(final)),
            "success_definition": f"end effector within {cfg.success_radius_m} m of the target at the end of the "
            f"{cfg.episode_s} s episode",
        }

    def _task_state(self):
        return self._joint_state()

    def _load_task_state(self, state):
        self._load_joint_state(state)


# --- measures from a log (replay) ------------------------------------------------------------------
class ReachLogMetrics:
    """The reach error from a logged rollout (`s2r replay`): the end-effector distance to the target,
    by forward kinematics of the logged joint positions (the newest frame of joint_pos_rel plus the
    action offset, the default pose) on the robot's own model, every running step; the final
    distance of each target is the one on the last step before the target changes (the summary's
    episode end), success within `success_radius_m`. The shape of HoverLogMetrics."""

    score_definition = "success rate"

    def __init__(self, spec: PolicySpec, cfg: ArmReachCfg, stats):
        self.cfg = cfg
        self.joint_names = spec.action.names
        self.default_pos = np.asarray(spec.action.offset)
        self.dist = stats(1)
        self._fk = None
        self._final: list[float] = []  # the final distance to each target passed
        self._prev_target: np.ndarray | None = None
        self._last_dist = float("nan")

    def add(self, frames: dict[str, np.ndarray]) -> None:
        dist = self._ee_distance(frames["joint_pos_rel"] + self.default_pos, frames["target_pos"])
        for d, target in zip(dist, frames["target_pos"], strict=True):
            if self._prev_target is not None and np.abs(target - self._prev_target).max() > 1e-6:
                self._final.append(self._last_dist)
            self._prev_target, self._last_dist = target, d
        self.dist.add(dist[:, None])

    def _ee_distance(self, joint_pos: np.ndarray, target: np.ndarray) -> np.ndarray:
        import mujoco

        from sim.robots import find_robot, robot_model

        if self._fk is None:
            robot = robot_model(find_robot(self.cfg.robot), kind="arm")
            model = robot.model
            jids = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, n) for n in self.joint_names]
            self._fk = (model, mujoco.MjData(model), [model.jnt_qposadr[j] for j in jids], robot.ee_pos_adr)
        model, data, qadr, adr = self._fk
        out = np.empty(len(joint_pos))
        for i, q in enumerate(joint_pos):
            data.qpos[qadr] = q
            mujoco.mj_fwdPosition(model, data)
            mujoco.mj_sensorPos(model, data)
            out[i] = np.linalg.norm(data.sensordata[adr : adr + 3] - target[i])
        return out

    def summary(self) -> dict:
        final = np.asarray(self._final + ([self._last_dist] if self._prev_target is not None else []))
        radius = self.cfg.success_radius_m
        return {
            "mean_ee_distance_m": self.dist.summary(("e",))["e"]["mean"],
            "targets": len(final),
            "mean_final_distance_m": float(final.mean()) if len(final) else float("nan"),
            "median_final_distance_m": float(np.median(final)) if len(final) else float("nan"),
            "success_rate": float((final <= radius).mean()) if len(final) else float("nan"),
            "definition": "reach error: end-effector distance to the target (forward kinematics of the logged joints) "
            f"on the last step before each target change; success within {radius} m",
        }

    @staticmethod
    def score(result: dict) -> float:
        return float(result["success_rate"])
