"""A simulated robot for sim-in-the-loop deployment: it takes what a robot's driver takes (actuator
commands with drive gains) and reports what a robot's sensors report (deploy.signals readings).

It is the training task with one env, so its physics, actuator models, randomization and episodes
are exactly the ones `s2r eval` scores; what differs is that a deploy controller, not the env's own
observation pipeline, closes the loop. A "reality gap" pins chosen randomized parameters (say
`motor_strength=0.8`) to values the policy may not have trained on. Episodes run back to back; each
step is recorded and scored with the task's evaluation summary.
"""

from __future__ import annotations

import mujoco
import numpy as np
import torch

from deploy.signals import quat_to_rotmat, world_to_body
from sim.config import ConfigError
from sim.evaluate import EpisodeRecorder
from sim.tasks import make_env


class SimRobot:
    def __init__(self, task: str, cfg=None, seed: int = 0, gap: dict[str, float] | None = None):
        self.task = task
        self.env = env = make_env(task, 1, cfg, seed=seed)
        env.record_metrics = True
        self.cfg = env.cfg
        self.spec = env.spec
        self.gap = dict(gap or {})
        fixed = set(getattr(env, "variant_param_names", ()))
        for name in self.gap:
            if name not in env.param_names:
                raise ConfigError(f"reality gap: '{name}' is not a randomized parameter of {task} (have {list(env.param_names)})")
            if name in fixed:
                raise ConfigError(f"reality gap: '{name}' is baked into the model variants and cannot be pinned per robot")
        self._gap_cols = [(env.param_names.index(k), float(v)) for k, v in self.gap.items()]
        model = env.backend.model
        self.has_base = model.njnt > 0 and model.jnt_type[0] == mujoco.mjtJoint.mjJNT_FREE
        self.joint_names: tuple[str, ...] = getattr(env, "joint_names", ())
        self.recorder = EpisodeRecorder(task, self.cfg, 1, env.max_episode_steps, per_env=10**9)
        self.episode_steps = 0
        env.reset()
        self._apply_gap()

    @property
    def control_hz(self) -> float:
        return self.spec.control_hz

    def _apply_gap(self) -> None:
        if self._gap_cols:
            for col, value in self._gap_cols:
                self.env.params[:, col] = value
            self.env._apply_params(self.env.env_ids)

    def step(self, command: np.ndarray, kp_scale: float = 1.0, kd: np.ndarray | None = None) -> bool:
        """One control period holding `command` (spec units, actuator order). Joint robots: the drive's
        position gain times `kp_scale` and, when given, damping gains `kd` (N m s/rad) instead of its
        own. Returns True when an episode ended (and the next one began)."""
        env = self.env
        pd = getattr(env, "pd", None)
        saved = None
        if pd is not None and (kp_scale != 1.0 or kd is not None):
            saved = pd.kp.clone(), pd.kd.clone()
            pd.kp *= kp_scale
            if kd is not None:
                pd.kd[:] = torch.as_tensor(np.asarray(kd), dtype=pd.kd.dtype)
        cmd = torch.as_tensor(np.asarray(command, dtype=np.float32).reshape(1, -1), device=env.device)
        _, _, terminated, truncated, extras = env.step_command(cmd)
        if saved is not None:
            pd.kp.copy_(saved[0])
            pd.kd.copy_(saved[1])
        self.recorder.add(extras["metrics"], extras["reasons"], terminated, truncated)
        self.episode_steps += 1
        ended = bool(terminated[0] or truncated[0])
        if ended:
            self.episode_steps = 0
            self._apply_gap()
        return ended

    def readings(self) -> dict[str, np.ndarray]:
        """What the robot's sensors report now (noise-free), keyed as deploy.signals.READINGS."""
        env, out = self.env, {}
        if self.has_base:
            qpos = env.backend.qpos[0].numpy()
            qvel = env.backend.qvel[0].numpy()
            quat = qpos[3:7] / np.linalg.norm(qpos[3:7])
            rot = quat_to_rotmat(quat)
            out["base_pos_w"] = qpos[:3].copy()
            out["base_quat_wxyz"] = quat
            out["base_lin_vel_b"] = world_to_body(rot, qvel[:3])  # free joint: linear velocity in world
            out["base_ang_vel_b"] = qvel[3:6].copy()  # free joint: angular velocity in body
        if self.joint_names:
            out["joint_pos"] = env.joint_pos[0].double().numpy()
            out["joint_vel"] = env.joint_vel[0].double().numpy()
            out["joint_effort"] = env.torque[0].double().numpy()
        return out

    def operator(self) -> dict[str, np.ndarray]:
        """What the operator asks of the robot in this episode (the task's command or target)."""
        env, out = self.env, {}
        if hasattr(env, "command"):
            out["command"] = env.command[0].double().numpy()
        if hasattr(env, "target_pos_m"):
            t = env.target_pos_m
            out["target_pos_w"] = (t[0] if t.ndim == 2 else t).double().numpy()
        return out

    def close(self) -> None:
        self.env.close()

