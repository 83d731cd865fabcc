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

from deploy.spec import ActionSpec, ObsTerm, PolicySpec, SpecExtra
from config.validate import SensorNoiseCfg, nonnegative, positive
from sim.joint_env import ActuatorRandomizationCfg, JointPositionEnv
from sim.robots import PAYLOAD_RADIUS_M, RobotModel


@dataclass(frozen=True)
class TargetCfg:
    """Targets uniform in a box (base frame), one per episode."""

    center_m: tuple[float, float, float] = (-0.45, -0.13, 0.35)
    half_extent_m: tuple[float, float, float] = (0.2, 0.25, 0.15)


@dataclass(frozen=True)
class RandomizationCfg:
    """Model fields are scaled per model variant; actuator parameters drawn per episode."""

    damping_scale: tuple[float, float] = (0.5, 2.0)
    frictionloss_Nm: tuple[float, float] = (0.0, 0.5)
    armature_scale: tuple[float, float] = (0.9, 1.1)
    payload_kg: tuple[float, float] = (0.0, 1.0)
    model_variants: int = field(default=64, metadata=positive())
    actuators: ActuatorRandomizationCfg = ActuatorRandomizationCfg(
        kp_scale=(0.9, 1.1), kd_scale=(0.9, 1.1), motor_strength=(0.95, 1.05), latency_steps=(0, 1),
        joint_pos_bias_rad=0.002,
    )


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
    precision_radius_m: float = field(default=0.05, metadata=positive())
    target: TargetCfg = TargetCfg()
    randomization: RandomizationCfg = RandomizationCfg()
    noise: NoiseCfg = NoiseCfg()
    reward: dict[str, float] = field(
        default_factory=lambda: {
            "ee_pos_error": -1.0,
            "ee_pos_precision": 1.0,
            "action_rate": -0.005,
            "joint_vel": -0.001,
        }
    )


def variant_param_names(joints: tuple[str, ...]) -> tuple[str, ...]:
    return (
        tuple(f"{j}_damping_scale" for j in joints) + tuple(f"{j}_frictionloss_Nm" for j in joints)
        + tuple(f"{j}_armature_scale" for j in joints) + ("payload_kg",)
    )


def make_spec(cfg: ArmReachCfg, robot: RobotModel) -> PolicySpec:
    joints = robot.cfg.joints
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
        extra=SpecExtra(physics_hz=robot.physics_hz, kp=joints.kp, kd=joints.kd,
                        success=f"end effector within {cfg.success_radius_m} m of the target at the end of the episode"),
    )


class ArmReachEnv(JointPositionEnv):
    video_camera = "front"

    def __init__(self, cfg: ArmReachCfg, num_envs: int, device="cpu", seed: int = 0, backend="mujoco"):
        self.cfg = cfg
        self._setup(cfg, "arm", make_spec, variant_param_names, num_envs, device, seed, backend)
        self.variant_param_names = variant_param_names(self.joint_names)  # baked into the model variants
        self._actuator_cols = slice(len(self.variant_param_names), None)
        dev = self.device
        self.payload = self.robot.payload_body
        self._ee_pos_adr = self.robot.ee_pos_adr
        self._ee_quat_adr = self.robot.ee_quat_adr
        self.target_pos_m = torch.zeros(num_envs, 3, device=dev)
        self.ee_pos_m = torch.zeros(num_envs, 3, device=dev)
        self.ee_quat = torch.zeros(num_envs, 4, device=dev)
        self._target_center = torch.tensor(cfg.target.center_m, device=dev)
        self._target_half = torch.tensor(cfg.target.half_extent_m, device=dev)
        self._variant_params = self._randomize_variants()
        self._read_state()

    def _noise_std_by_term(self) -> dict[str, float]:
        return {"joint_pos_rel": self.cfg.noise.joint_pos_rad, "joint_vel": self.cfg.noise.joint_vel_radps}

    def _operator_readings(self) -> dict[str, torch.Tensor]:
        return {"target_pos_w": self.target_pos_m}

    def _randomize_variants(self) -> torch.Tensor:
        """Sample joint damping, friction, armature and payload per model variant and write them in."""
        dr, b, model = self.cfg.randomization, self.backend, self.backend.model
        k, n = len(b.variants), len(self.joint_names)
        u = torch.rand(k, 3 * n + 1, generator=self.generator, device=self.device).cpu()
        lo = torch.tensor([dr.damping_scale[0]] * n + [dr.frictionloss_Nm[0]] * n + [dr.armature_scale[0]] * n + [dr.payload_kg[0]])
        hi = torch.tensor([dr.damping_scale[1]] * n + [dr.frictionloss_Nm[1]] * n + [dr.armature_scale[1]] * n + [dr.payload_kg[1]])
        p = lo + u * (hi - lo)
        if k == 1:  # one shared model: nominal physics
            p = torch.tensor([1.0] * n + list(model.dof_frictionloss[self._dadr]) + [1.0] * n + [0.0])[None]
        d = self._dadr
        r_payload = PAYLOAD_RADIUS_M  # the payload sphere's radius: inertia of a solid sphere of that mass
        for m, row in zip(b.variants, p.double().numpy()):
            m.dof_damping[d] = model.dof_damping[d] * row[:n]
            m.dof_frictionloss[d] = row[n : 2 * n]
            m.dof_armature[d] = model.dof_armature[d] * row[2 * n : 3 * n]
            mass = model.body_mass[self.payload] + row[-1]
            m.body_mass[self.payload] = mass
            m.body_inertia[self.payload] = 0.4 * mass * r_payload**2
        return p.to(self.device, torch.float32)

    def _read_sensors(self) -> None:
        s = self.backend.sensordata
        self.ee_pos_m = s[:, self._ee_pos_adr : self._ee_pos_adr + 3].to(self.device, torch.float32)
        self.ee_quat = s[:, self._ee_quat_adr : self._ee_quat_adr + 4].to(self.device, torch.float32)

    def _apply_command(self, target_rad: torch.Tensor) -> None:
        super()._apply_command(target_rad)
        self._read_sensors()

    def _reset_envs(self, env_ids: torch.Tensor) -> None:
        n = len(env_ids)
        dev = self.device
        variant = self._sample_variants(env_ids)
        p = torch.cat((self._variant_params[variant], self._sample_actuator_params(n, self.cfg.randomization.actuators)), dim=-1)
        self.params[env_ids] = p
        self._apply_params(env_ids)
        u = torch.rand(n, 3 + len(self.joint_names), generator=self.generator, device=dev)
        self.target_pos_m[env_ids] = self._target_center + (u[:, :3] * 2 - 1) * self._target_half
        qpos = self._start_pose((u[:, 3:] * 2 - 1) * 0.2)
        self.backend.reset(env_ids, qpos.double(), torch.zeros(n, self.backend.model.nv, dtype=torch.float64))
        self._read_state()
        self.torque[env_ids] = 0.0
        # the end-effector sensors are refreshed by the next physics step; until then, keep the last value
        # except for the freshly reset envs, whose reward starts at the next step

    def _apply_params(self, env_ids) -> None:
        self._apply_actuator_params(env_ids, self.params[env_ids][:, self._actuator_cols])

    def _privileged(self):
        return torch.cat((self.ee_pos_m, self.ee_quat, self.target_pos_m - self.ee_pos_m, self.params), dim=-1)

    def _terminations(self):
        return {}

    def _ee_distance(self) -> torch.Tensor:
        return (self.target_pos_m - self.ee_pos_m).norm(dim=-1)

    def _reward_ee_pos_error(self):
        return self._ee_distance()

    def _reward_ee_pos_precision(self):
        return torch.exp(-self._ee_distance().square() / self.cfg.precision_radius_m**2)

    def _reward_action_rate(self):
        return (self.action - self.prev_action).square().sum(-1)

    def _reward_joint_vel(self):
        return self.joint_vel.square().sum(-1)

    def _step_metrics(self):
        return {"ee_distance_m": self._ee_distance()}

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
        return {"target_pos_m": self.target_pos_m, "torque": self.torque}

    def _load_task_state(self, state):
        self._read_state()  # then the sensors the saved state holds (the backend keeps no sensor data)
        self.target_pos_m.copy_(state["target_pos_m"])
        self.torque.copy_(state["torque"])
        self._apply_params(self.env_ids)
        self._read_sensors()


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
        for d, target in zip(dist, frames["target_pos"]):
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
        return {"mean_ee_distance_m": self.dist.summary(("e",))["e"]["mean"], "targets": len(final),
                "mean_final_distance_m": float(final.mean()) if len(final) else float("nan"),
                "median_final_distance_m": float(np.median(final)) if len(final) else float("nan"),
                "success_rate": float((final <= radius).mean()) if len(final) else float("nan"),
                "definition": "reach error: end-effector distance to the target (forward kinematics of the logged joints) "
                f"on the last step before each target change; success within {radius} m"}

    @staticmethod
    def score(result: dict) -> float:
        return float(result["success_rate"])
