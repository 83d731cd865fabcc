"""arm-reach: bring the end effector (tool flange) of a UR5e-class arm to a random target position.

Joint position targets into PD at 250 Hz physics, policy at 50 Hz. Terms follow Isaac Lab's reach task.
Actor: joint positions relative to the default pose and joint velocities (noisy, encoder offsets),
the target position in the base frame, last action. Critic: those without noise, the true
end-effector pose, and every randomized parameter (joint damping, friction, armature, payload,
gains, latency, encoder offsets).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from deploy.spec import ActionSpec, ObsTerm, PolicySpec
from sim.config import SensorNoiseCfg, nonnegative, positive
from sim.joint_env import ActuatorRandomizationCfg, JointControlCfg, JointPositionEnv

MODELS_DIR = Path(__file__).resolve().parent.parent / "models"
JOINTS = ("shoulder_pan_joint", "shoulder_lift_joint", "elbow_joint", "wrist_1_joint", "wrist_2_joint", "wrist_3_joint")


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
    model: str = "arm.xml"
    control_hz: float = field(default=50.0, metadata=positive())
    episode_s: float = field(default=3.0, metadata=positive())
    control: JointControlCfg = JointControlCfg(
        kp=(1000.0, 3000.0, 1500.0, 300.0, 300.0, 100.0), kd=(40.0, 120.0, 40.0, 8.0, 7.0, 4.0), action_scale_rad=1.0
    )
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


VARIANT_PARAMS = (
    tuple(f"{j}_damping_scale" for j in JOINTS) + tuple(f"{j}_frictionloss_Nm" for j in JOINTS)
    + tuple(f"{j}_armature_scale" for j in JOINTS) + ("payload_kg",)
)
VARIANT, ACTUATOR = slice(0, len(VARIANT_PARAMS)), slice(len(VARIANT_PARAMS), None)


def make_spec(cfg: ArmReachCfg, default_pos, low, high) -> PolicySpec:
    n = len(JOINTS)
    return PolicySpec(
        robot="ur5e",
        task="arm-reach",
        control_hz=cfg.control_hz,
        obs=(
            ObsTerm("joint_pos_rel", JOINTS, (1.0,) * n, unit="rad"),
            ObsTerm("joint_vel", JOINTS, (0.1,) * n, unit="rad/s"),
            ObsTerm("target_pos", ("x", "y", "z"), (2.0,) * 3, unit="m"),
            ObsTerm("last_action", JOINTS, (1.0,) * n),
        ),
        action=ActionSpec(
            type="joint_position",
            names=JOINTS,
            scale=(cfg.control.action_scale_rad,) * n,
            offset=tuple(float(x) for x in default_pos),
            clip=3.0,
            low=tuple(float(x) for x in low),
            high=tuple(float(x) for x in high),
            unit="rad",
        ),
        extra={"kp": list(cfg.control.kp), "kd": list(cfg.control.kd), "success": f"end effector within {cfg.success_radius_m} m of the target at the end of the episode"},
    )


class ArmReachEnv(JointPositionEnv):
    variant_param_names = VARIANT_PARAMS  # baked into the model variants, not settable per env
    joint_names = JOINTS
    video_camera = "front"

    def __init__(self, cfg: ArmReachCfg, num_envs: int, device="cpu", seed: int = 0, backend="mujoco"):
        self.cfg = cfg
        self.param_names = VARIANT_PARAMS + self.actuator_param_names()
        self._setup(cfg, MODELS_DIR / cfg.model, make_spec, num_envs, device, seed, backend)
        model = self.backend.model
        dev = self.device
        self.payload = model.body("payload").id
        self._ee_pos_adr = model.sensor_adr[model.sensor("ee_pos").id]
        self._ee_quat_adr = model.sensor_adr[model.sensor("ee_quat").id]
        self.target_pos_m = torch.zeros(num_envs, 3, device=dev)
        self.ee_pos_m = torch.zeros(num_envs, 3, device=dev)
        self.ee_quat = torch.zeros(num_envs, 4, device=dev)
        self._target_center = torch.tensor(cfg.target.center_m, device=dev)
        self._target_half = torch.tensor(cfg.target.half_extent_m, device=dev)
        self._noise_std = torch.tensor((cfg.noise.joint_pos_rad,) * 6 + (cfg.noise.joint_vel_radps,) * 6, device=dev)
        self._variant_params = self._randomize_variants()
        self._read_joints()

    def _randomize_variants(self) -> torch.Tensor:
        """Sample joint damping, friction, armature and payload per model variant and write them in."""
        dr, b, model = self.cfg.randomization, self.backend, self.backend.model
        k, n = len(b.variants), len(JOINTS)
        u = torch.rand(k, 3 * n + 1, generator=self.generator, device=self.device).cpu()
        lo = torch.tensor([dr.damping_scale[0]] * n + [dr.frictionloss_Nm[0]] * n + [dr.armature_scale[0]] * n + [dr.payload_kg[0]])
        hi = torch.tensor([dr.damping_scale[1]] * n + [dr.frictionloss_Nm[1]] * n + [dr.armature_scale[1]] * n + [dr.payload_kg[1]])
        p = lo + u * (hi - lo)
        if k == 1:  # one shared model: nominal physics
            p = torch.tensor([1.0] * n + list(model.dof_frictionloss[self._dadr]) + [1.0] * n + [0.0])[None]
        d = self._dadr
        r_payload = 0.02  # the payload sphere's radius: inertia of a solid sphere of that mass
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
        u = torch.rand(n, 3 + len(JOINTS), generator=self.generator, device=dev)
        self.target_pos_m[env_ids] = self._target_center + (u[:, :3] * 2 - 1) * self._target_half
        qpos = torch.as_tensor(self.home_qpos, dtype=torch.float32, device=dev) + (u[:, 3:] * 2 - 1) * 0.2
        self.backend.reset(env_ids, qpos.double(), torch.zeros(n, len(JOINTS), dtype=torch.float64))
        self._read_joints()
        self.torque[env_ids] = 0.0
        # the end-effector sensors are refreshed by the next physics step; until then, keep the last value
        # except for the freshly reset envs, whose reward starts at the next step

    def _apply_params(self, env_ids) -> None:
        self._apply_actuator_params(env_ids, self.params[env_ids][:, ACTUATOR])

    def _signals(self):
        true = torch.cat((self.joint_pos - self.default_joint_pos, self.joint_vel), dim=-1)
        sensed = true + self.sensor_noise(self._noise_std)
        sensed[:, :6] += self.joint_pos_bias
        return true, {
            "joint_pos_rel": sensed[:, :6], "joint_vel": sensed[:, 6:], "target_pos": self.target_pos_m,
            "last_action": self.action,
        }

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

    def _task_state(self):
        return {"target_pos_m": self.target_pos_m, "torque": self.torque}

    def _load_task_state(self, state):
        self.target_pos_m.copy_(state["target_pos_m"])
        self.torque.copy_(state["torque"])
        self._apply_params(self.env_ids)
        self._read_joints()
        self._read_sensors()
