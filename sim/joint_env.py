"""What every robot driven by joint position targets shares (quadruped, arm).

The policy outputs joint position targets; a PD law with per-env gains and motor strength turns them
into torques at every physics step (as the robot's motor drivers do, and as legged_gym does), for
`decimation` physics steps per control step. MuJoCo evaluates the PD law (sim.actuators.add_joint_drives),
so a control step is one batched rollout call. Model fields (friction, masses, armature) are
randomized through the backend's pool of model variants (startup events, sim.terms.events): each env
draws a variant at reset.
"""

from __future__ import annotations

import numpy as np
import torch

from sim.actuators import JointPD
from sim.backends import make_backend
from sim.env import BatchedEnv
from sim.readings import robot_readings
from sim.robots import find_robot, robot_model


class JointPositionEnv(BatchedEnv):
    """A BatchedEnv whose command is joint position targets (rad) for `joint_names`.

    Subclasses call `_setup`; they own resets and sensor noise. After each step `readings` (sim.readings:
    joints, and a floating base, feet and an end effector where the robot has them), `prev_joint_vel`
    (the joint velocities a control step earlier) and, for a robot with feet, `feet_touchdown` and
    `air_time_at_touchdown_s` `(num_envs, num_feet)`: which feet touched down in this step, after how
    long in the air.
    """

    joint_names: tuple[str, ...]

    def _setup(self, cfg, kind: str, make_spec, num_envs: int, device, seed: int, backend: str) -> None:
        """The set-up every joint-position task shares: robot, backend, spec, BatchedEnv, PD.
        `cfg` has fields robot, episode_s and model_variants; `make_spec(cfg, robot)`."""
        self.robot = robot = robot_model(find_robot(cfg.robot), kind=kind)
        joints = robot.cfg.joints
        assert joints is not None and robot.joint_low is not None and robot.joint_high is not None
        self.joint_names = joints.names
        self.backend = make_backend(backend, robot.model, num_envs, model_variants=cfg.model_variants, device=device)
        self.decimation = robot.decimation
        self.physics_dt_s = float(robot.model.opt.timestep)
        self.control_hz = robot.cfg.control_hz
        self.joint_low = robot.joint_low.astype(np.float32)
        self.joint_high = robot.joint_high.astype(np.float32)
        self.joint_low_t = torch.as_tensor(self.joint_low, device=device)
        self.joint_high_t = torch.as_tensor(self.joint_high, device=device)
        self._drive_ctrl = torch.as_tensor(robot.drive_ctrl)
        self.spec = make_spec(cfg, robot)
        self.max_episode_steps = round(cfg.episode_s * self.control_hz)
        kp = torch.tensor(joints.per_joint("kp"), dtype=torch.float32, device=device)
        kd = torch.tensor(joints.per_joint("kd"), dtype=torch.float32, device=device)
        self.pd = JointPD(num_envs, kp, kd)
        feet = robot.cfg.feet if robot.touch_adr is not None else None
        n_j, n_feet = len(self.joint_names), len(feet.names) if feet is not None else 0
        self.prev_joint_vel = torch.zeros(num_envs, n_j, device=device)
        self.feet_air_time_s = torch.zeros(num_envs, n_feet, device=device)
        self.feet_touchdown = torch.zeros(num_envs, n_feet, dtype=torch.bool, device=device)
        self.air_time_at_touchdown_s = torch.zeros(num_envs, n_feet, device=device)
        BatchedEnv.__init__(self, num_envs, device, seed)

    def _start_pose(self, offsets_rad: torch.Tensor) -> torch.Tensor:
        """`(n, nq)` float32 start states: the default pose with joint offsets `(n, num_joints)` (or
        `(n, 1)` for all joints), kept inside the joint limits (a default pose near a limit plus an offset
        would start beyond it: MuJoCo pushes back, and a robot's safety guard would fault)."""
        qpos = torch.as_tensor(self.robot.home_qpos, dtype=torch.float32, device=self.device).repeat(
            len(offsets_rad), 1
        )
        qadr = self.robot.joint_qadr
        joints = qpos[:, qadr] + offsets_rad
        qpos[:, qadr] = torch.minimum(torch.maximum(joints, self.joint_low_t), self.joint_high_t)
        return qpos

    def _read_state(self) -> None:
        """The robot's readings (float32) from the backend's state after a step or reset."""
        b, dev = self.backend, self.device
        r = robot_readings(
            self.robot,
            b.qpos.to(dev, torch.float32),
            b.qvel.to(dev, torch.float32),
            b.sensordata.to(dev, torch.float32),
        )
        self.readings = {**r, **self.operator_readings()}

    def _reset_joint_state(self, env_ids: torch.Tensor) -> None:
        """After a reset's `_read_state`: the torque and touch sensors report from the next physics step,
        so the reset envs read zero effort and contact until then; no joint motion or air time before."""
        r = self.readings
        r["joint_effort"][env_ids] = 0.0
        if "foot_force_N" in r:
            r["foot_force_N"][env_ids] = 0.0
        self.prev_joint_vel[env_ids] = 0.0
        self.feet_air_time_s[env_ids] = 0.0

    def _apply_command(self, target_rad: torch.Tensor) -> None:
        """PD toward the (latency-delayed) targets at every physics step, run by MuJoCo: one rollout call
        for the control period, or, when a simulated robot swaps in its newest command before each
        physics step, one call per physics step."""
        b, hook = self.backend, self.physics_step_hook
        self.prev_joint_vel = self.readings["joint_vel"]
        for nstep in (self.decimation,) if hook is None else (1,) * self.decimation:
            if hook is not None:
                target_rad = hook(target_rad)
            b.ctrl[:, self._drive_ctrl] = self.pd.controls(target_rad).to(b.ctrl)
            b.step(nstep)
        self._read_state()
        if self.feet_air_time_s.shape[1]:
            self._track_feet()

    def _track_feet(self) -> None:
        """Touchdowns and air times from the feet's contact forces (a foot is down above 1 N)."""
        contact = self.readings["foot_force_N"] > 1.0
        self.feet_touchdown = (self.feet_air_time_s > 0) & contact
        self.feet_air_time_s += self.control_dt_s
        self.air_time_at_touchdown_s = self.feet_air_time_s * self.feet_touchdown
        self.feet_air_time_s *= ~contact

    def _physics_ok(self) -> torch.Tensor:
        return self.backend.physics_ok().to(self.device)

    def _joint_state(self) -> dict[str, torch.Tensor]:
        """The joint tasks' state to save (sim.env's `_task_state`): what the readings and params do not hold."""
        r = self.readings
        return {
            "joint_effort": r["joint_effort"],
            "prev_joint_vel": self.prev_joint_vel,
            "feet_air_time_s": self.feet_air_time_s,
            **({"foot_force_N": r["foot_force_N"]} if "foot_force_N" in r else {}),
        }

    def _load_joint_state(self, state: dict[str, torch.Tensor]) -> None:
        self._read_state()  # then the sensors the saved state holds (the backend keeps no sensor data)
        self.readings["joint_effort"].copy_(state["joint_effort"])
        if "foot_force_N" in state:
            self.readings["foot_force_N"].copy_(state["foot_force_N"])
        self.prev_joint_vel = state["prev_joint_vel"].clone()
        self.feet_air_time_s.copy_(state["feet_air_time_s"])

    def close(self) -> None:
        self.backend.close()
