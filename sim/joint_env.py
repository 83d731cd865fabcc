"""What every robot driven by joint position targets shares (quadruped, arm).

The policy outputs joint position targets; a PD law with per-env gains and motor strength turns them
into torques at every physics step (as the robot's motor drivers do, and as legged_gym does), for
`decimation` physics steps per control step. MuJoCo evaluates the PD law (sim.actuators.add_joint_drives),
so a control step is one batched rollout call. Model fields (friction, masses, armature) are
randomized through the backend's pool of model variants: each env draws a variant at reset.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from config.robot import JointsCfg
from config.validate import nonnegative
from sim.actuators import JointPD
from sim.backends import make_backend
from sim.env import BatchedEnv
from sim.readings import robot_readings
from sim.robots import find_robot, robot_model


@dataclass(frozen=True)
class ActuatorRandomizationCfg:
    """Per-episode actuator parameters: gain and strength scales, latency in control steps."""

    kp_scale: tuple[float, float] = (0.8, 1.2)
    kd_scale: tuple[float, float] = (0.8, 1.2)
    motor_strength: tuple[float, float] = (0.9, 1.1)
    latency_steps: tuple[int, int] = (0, 1)
    joint_pos_bias_rad: float = field(default=0.01, metadata=nonnegative())  # encoder offset


class JointPositionEnv(BatchedEnv):
    """A BatchedEnv whose command is joint position targets (rad) for `joint_names`.

    Subclasses call `_setup`; they own resets, sensor noise and rewards. After each step `readings`
    (sim.readings: joints, and a floating base and feet where the robot has them) and from them
    `joint_pos`, `joint_vel` `(num_envs, num_joints)` float32 and `torque` (last physics step's torques).
    """

    joint_names: tuple[str, ...]

    def _setup(self, cfg, kind: str, make_spec, task_params, num_envs: int, device, seed: int, backend: str) -> None:
        """The set-up every joint-position task shares: robot, backend, spec, BatchedEnv, PD.
        `cfg` has fields robot, episode_s, action_scale_rad, reward and
        randomization.{model_variants, actuators}; `make_spec(cfg, robot)`; `task_params(joint_names)`:
        the names of the task's own randomized parameters, the columns of `params` before the actuators'."""
        dr = cfg.randomization
        self.robot = robot = robot_model(find_robot(cfg.robot), kind=kind)
        self.joint_names = robot.cfg.joints.names
        self.param_names = task_params(self.joint_names) + self.actuator_param_names()
        self.backend = make_backend(backend, robot.model, num_envs, model_variants=dr.model_variants)
        self.decimation = robot.decimation
        self.physics_dt_s = float(robot.model.opt.timestep)
        self.control_hz = robot.cfg.control_hz
        self._qadr, self._dadr = robot.joint_qadr, robot.joint_dadr
        self.joint_low = robot.joint_low.astype(np.float32)
        self.joint_high = robot.joint_high.astype(np.float32)
        self._drive_ctrl = torch.as_tensor(robot.drive_ctrl)
        self.spec = make_spec(cfg, robot)
        self.reward_weights = dict(cfg.reward)
        self.max_episode_steps = round(cfg.episode_s * self.control_hz)
        self.max_latency_steps = dr.actuators.latency_steps[1]
        BatchedEnv.__init__(self, num_envs, device, seed)
        self._init_joints(robot.cfg.joints)

    def _init_joints(self, joints: JointsCfg) -> None:
        """After BatchedEnv.__init__: the PD drives' gains, and where the encoder offsets go."""
        dev = self.device
        kp = torch.tensor(joints.per_joint("kp"), dtype=torch.float32, device=dev)
        kd = torch.tensor(joints.per_joint("kd"), dtype=torch.float32, device=dev)
        self.pd = JointPD(self.num_envs, kp, kd)
        self._encoder_bias_cols = self.bias_columns("joint_pos_rel")
        self._joint_low_t = torch.as_tensor(self.joint_low, device=dev)
        self._joint_high_t = torch.as_tensor(self.joint_high, device=dev)

    def _start_pose(self, offsets_rad: torch.Tensor) -> torch.Tensor:
        """`(n, nq)` float32 start states: the default pose with joint offsets `(n, num_joints)` (or
        `(n, 1)` for all joints), kept inside the joint limits (a default pose near a limit plus an offset
        would start beyond it: MuJoCo pushes back, and a robot's safety guard would fault)."""
        qpos = torch.as_tensor(self.robot.home_qpos, dtype=torch.float32, device=self.device).repeat(len(offsets_rad), 1)
        joints = qpos[:, self._qadr] + offsets_rad
        qpos[:, self._qadr] = torch.minimum(torch.maximum(joints, self._joint_low_t), self._joint_high_t)
        return qpos

    def _operator_readings(self) -> dict[str, torch.Tensor]:
        """What the operator gives the robot, as readings (a velocity command, a target)."""
        return {}

    def _read_state(self) -> None:
        """The robot's readings (float32) from the backend's state after a step or reset."""
        b, dev = self.backend, self.device
        r = robot_readings(self.robot, b.qpos.to(dev, torch.float32), b.qvel.to(dev, torch.float32), b.sensordata.to(dev, torch.float32))
        self.readings = {**r, **self._operator_readings()}
        self.joint_pos, self.joint_vel, self.torque = r["joint_pos"], r["joint_vel"], r["joint_effort"]

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
        self._read_state()

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
        self.sensor_bias[env_ids, self._encoder_bias_cols] = p[:, 4:]

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
