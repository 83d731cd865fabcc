"""What every robot driven by joint position targets shares (quadruped, arm).

The policy outputs joint position targets; a PD law with per-env gains and motor strength turns them
into torques at every physics step (as the robot's motor drivers do, and as legged_gym does), for
`decimation` physics steps per control step. MuJoCo evaluates the PD law (sim.actuators.add_joint_drives),
so a control step is one batched rollout call. Model fields (friction, masses, armature) are
randomized through the backend's pool of model variants: each env draws a variant at reset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import mujoco
import numpy as np
import torch

from sim.actuators import JointPD, add_joint_drives
from sim.backends import make_backend, physics_substeps
from sim.backends.mujoco_cpu import ModelError, load_model
from sim.config import nonnegative, positive
from sim.env import BatchedEnv


@dataclass(frozen=True)
class JointControlCfg:
    """Joint position control: target = default_pose + action_scale * action, PD to torque."""

    kp: tuple[float, ...]  # N m/rad, one per joint, or one for all
    kd: tuple[float, ...]  # N m s/rad
    action_scale_rad: float = field(default=0.25, metadata=positive())
    default_pose_key: str = "home"  # keyframe holding the default joint positions


@dataclass(frozen=True)
class ActuatorRandomizationCfg:
    """Per-episode actuator parameters: gain and strength scales, latency in control steps."""

    kp_scale: tuple[float, float] = (0.8, 1.2)
    kd_scale: tuple[float, float] = (0.8, 1.2)
    motor_strength: tuple[float, float] = (0.9, 1.1)
    latency_steps: tuple[int, int] = (0, 1)
    joint_pos_bias_rad: float = field(default=0.01, metadata=nonnegative())  # encoder offset


def resolve_joints(model: mujoco.MjModel, names: tuple[str, ...], path: str):
    """qpos addresses, dof addresses and motor ids of the named hinge joints, in the given order. Raises
    ModelError naming the first joint the model lacks or cannot drive with a torque motor (gear 1,
    ctrlrange = torque limit), which is what add_joint_drives builds the drive from."""
    all_joints = [model.joint(i).name for i in range(model.njnt)]
    qadr, dadr, act_ids = [], [], []
    for name in names:
        jid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, name)
        if jid < 0:
            raise ModelError(f"{path}: model has no joint '{name}' (joints: {', '.join(all_joints)})")
        if model.jnt_type[jid] != mujoco.mjtJoint.mjJNT_HINGE:
            raise ModelError(f"{path}: joint '{name}' is not a hinge joint")
        acts = [a for a in range(model.nu) if model.actuator_trntype[a] == mujoco.mjtTrn.mjTRN_JOINT and model.actuator_trnid[a, 0] == jid]
        if not acts:
            raise ModelError(f"{path}: no actuator drives joint '{name}'")
        a = acts[0]
        if not model.actuator_ctrllimited[a]:
            raise ModelError(f"{path}: actuator '{model.actuator(a).name}' of joint '{name}' has no ctrlrange (torque limit)")
        if model.actuator_gear[a, 0] != 1 or model.actuator_gaintype[a] != mujoco.mjtGain.mjGAIN_FIXED or model.actuator_biastype[a] != mujoco.mjtBias.mjBIAS_NONE:
            raise ModelError(f"{path}: actuator '{model.actuator(a).name}' of joint '{name}' is not a torque motor with gear 1")
        qadr.append(model.jnt_qposadr[jid])
        dadr.append(model.jnt_dofadr[jid])
        act_ids.append(a)
    return np.array(qadr), np.array(dadr), np.array(act_ids)


def per_joint(values: tuple[float, ...], n: int, name: str) -> np.ndarray:
    if len(values) == 1:
        return np.full(n, values[0])
    if len(values) != n:
        raise ModelError(f"{name}: {len(values)} values for {n} joints")
    return np.asarray(values, dtype=np.float64)


class JointPositionEnv(BatchedEnv):
    """A BatchedEnv whose command is joint position targets (rad) for `joint_names`.

    Subclasses set `joint_names` and call `_init_joints` after choosing the model; they own resets,
    observations and rewards. After each step: `joint_pos`, `joint_vel` `(num_envs, num_joints)`
    float32, `torque` (last physics step's torques) and `sensordata` (float32).
    """

    joint_names: tuple[str, ...]

    def _setup(self, cfg, model_path, make_spec, num_envs: int, device, seed: int, backend: str) -> None:
        """The set-up every joint-position task shares: backend, default pose, spec, BatchedEnv, PD.
        `cfg` has model-independent fields control_hz, episode_s, control, reward and
        randomization.{model_variants, actuators}; `make_spec(cfg, default_pos, low, high)`."""
        dr = cfg.randomization
        self._make_backend(model_path, num_envs, cfg.control_hz, dr.model_variants, backend)
        self.home_qpos = self._default_pose(cfg.control.default_pose_key)
        default_pos = self.home_qpos[self._qadr]
        self.spec = make_spec(cfg, default_pos, self.joint_low, self.joint_high)
        self.reward_weights = dict(cfg.reward)
        self.max_episode_steps = round(cfg.episode_s * cfg.control_hz)
        self.max_latency_steps = dr.actuators.latency_steps[1]
        BatchedEnv.__init__(self, num_envs, device, seed)
        self._init_joints(cfg.control, default_pos)

    def _make_backend(self, model_path, num_envs: int, control_hz: float, model_variants: int, backend: str):
        # joints are checked on the model as written; the backend then adds their drives to it
        raw = load_model(model_path)
        self._qadr, self._dadr, act_ids = resolve_joints(raw, self.joint_names, f"model {model_path}")
        motors = [raw.actuator(a).name for a in act_ids]
        self.backend = make_backend(
            backend, model_path, num_envs, model_variants=model_variants,
            edit_spec=lambda spec: add_joint_drives(spec, self.joint_names),
        )
        model = self.backend.model
        self.decimation = physics_substeps(model, 1.0 / control_hz)
        self.physics_dt_s = float(model.opt.timestep)
        self.joint_low = model.jnt_range[[model.dof_jntid[d] for d in self._dadr], 0].astype(np.float32)
        self.joint_high = model.jnt_range[[model.dof_jntid[d] for d in self._dadr], 1].astype(np.float32)
        # ctrl columns of the drives, in JointPD.controls order: ff of every joint, then kq, then kqd
        self._drive_ctrl = torch.as_tensor([model.actuator(f"{m}{sfx}").id for sfx in ("", "_kq", "_kqd") for m in motors])
        self._torque_adr = torch.as_tensor([model.sensor_adr[model.sensor(f"{j}_torque").id] for j in self.joint_names])

    def _default_pose(self, key: str) -> np.ndarray:
        model = self.backend.model
        kid = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_KEY, key)
        if kid < 0:
            raise ModelError(f"model has no keyframe '{key}' for the default pose")
        return model.key_qpos[kid].copy()

    def _init_joints(self, control: JointControlCfg, default_joint_pos: np.ndarray) -> None:
        """After BatchedEnv.__init__: PD controller and joint state tensors."""
        n_j = len(self.joint_names)
        dev = self.device
        kp = torch.tensor(per_joint(control.kp, n_j, "kp"), dtype=torch.float32, device=dev)
        kd = torch.tensor(per_joint(control.kd, n_j, "kd"), dtype=torch.float32, device=dev)
        self.pd = JointPD(self.num_envs, kp, kd)
        self.default_joint_pos = torch.tensor(default_joint_pos, dtype=torch.float32, device=dev)
        self.joint_pos = torch.zeros(self.num_envs, n_j, device=dev)
        self.joint_vel = torch.zeros(self.num_envs, n_j, device=dev)
        self.torque = torch.zeros(self.num_envs, n_j, device=dev)
        self.joint_pos_bias = torch.zeros(self.num_envs, n_j, device=dev)  # per-episode encoder offsets
        self._qadr_t = torch.as_tensor(self._qadr)
        self._dadr_t = torch.as_tensor(self._dadr)

    def _read_joints(self) -> None:
        b = self.backend
        self.joint_pos = b.qpos[:, self._qadr_t].to(self.device, torch.float32)
        self.joint_vel = b.qvel[:, self._dadr_t].to(self.device, torch.float32)

    def _apply_command(self, target_rad: torch.Tensor) -> None:
        """PD toward the (latency-delayed) targets at every physics step, run by MuJoCo: one rollout call
        for the control period, or, when a simulated robot swaps in its newest command before each
        physics step, one call per physics step."""
        b, hook = self.backend, self.physics_step_hook
        for nstep in (self.decimation,) if hook is None else (1,) * self.decimation:
            if hook is not None:
                target_rad = hook(target_rad)
            b.ctrl[:, self._drive_ctrl] = self.pd.controls(target_rad).to(b.ctrl)
            b.step(nstep)
        self._read_joints()
        self.sensordata = b.sensordata.to(self.device, torch.float32)
        self.torque = self.sensordata[:, self._torque_adr]

    def actuator_param_names(self) -> tuple[str, ...]:
        """Names of the columns `_sample_actuator_params` returns."""
        return ("kp_scale", "kd_scale", "motor_strength", "latency_steps") + tuple(f"{j}_bias_rad" for j in self.joint_names)

    def _sample_actuator_params(self, n: int, a: ActuatorRandomizationCfg) -> torch.Tensor:
        """`(n, 4 + num_joints)`: gain scales, motor strength, latency (whole steps), encoder offsets."""
        n_j = len(self.joint_names)
        u = torch.rand(n, 4 + n_j, generator=self.generator, device=self.device)
        p = torch.empty_like(u)
        for col, (lo, hi) in enumerate((a.kp_scale, a.kd_scale, a.motor_strength)):
            p[:, col] = lo + u[:, col] * (hi - lo)
        p[:, 3] = (a.latency_steps[0] + u[:, 3] * (a.latency_steps[1] - a.latency_steps[0] + 0.999)).floor()
        p[:, 4:] = (u[:, 4:] * 2 - 1) * a.joint_pos_bias_rad
        return p

    def _apply_actuator_params(self, env_ids, p: torch.Tensor) -> None:
        """Columns as from `_sample_actuator_params`."""
        self.pd.set_params(env_ids, p[:, 0], p[:, 1], p[:, 2])
        self.latency_steps[env_ids] = p[:, 3].long()
        self.joint_pos_bias[env_ids] = p[:, 4:]

    def _sample_variants(self, env_ids: torch.Tensor) -> torch.Tensor:
        """A model variant per env in `env_ids`, uniformly; the backend steps it from now on."""
        k = len(self.backend.variants)
        ids = torch.randint(k, (len(env_ids),), generator=self.generator, device=self.device)
        self.backend.set_env_variant(env_ids, ids)
        return ids

    def _physics_ok(self) -> torch.Tensor:
        return self.backend.physics_ok().to(self.device)

    def close(self) -> None:
        self.backend.close()
