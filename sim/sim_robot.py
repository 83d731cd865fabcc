"""A simulated robot for sim-in-the-loop deployment: it takes what a robot's driver takes (actuator
commands with drive gains) and reports what a robot's sensors report (deploy.signals readings).

It is the training task with one env, so its physics, actuator models, randomization and episodes
are exactly the ones `s2r eval` scores; what differs is that a deploy controller, not the env's own
observation pipeline, closes the loop. A "reality gap" pins chosen randomized parameters (say
`motor_strength=0.8`) to values the policy may not have trained on. Episodes run back to back; each
step is recorded and scored with the task's evaluation summary.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch

from config.validate import ConfigError
from sim.evaluate import EpisodeRecorder
from sim.readings import robot_readings
from sim.tasks import default_cfg, make_env


def noise_free(cfg):
    """`cfg` with every sensor noise and bias range at zero: what the simulated robot's readings are
    (the training noise lives in the env's observation pipeline), so `s2r eval` under this config is
    the reference a sim-in-the-loop run is compared with."""
    noise = cfg.noise
    noise = dataclasses.replace(
        noise, **{f.name: 0.0 for f in dataclasses.fields(noise) if isinstance(getattr(noise, f.name), float)}
    )
    events = {
        name: dataclasses.replace(e, params={**e.params, "bias": 0.0}) if e.func == "sensor_bias" else e
        for name, e in cfg.events.items()
    }
    return dataclasses.replace(cfg, noise=noise, events=events)


class SimRobot:
    def __init__(
        self, task: str, cfg=None, seed: int = 0, gap: dict[str, float] | None = None, robot: str | None = None
    ):
        """`cfg`: the task config (default: the task's, on `robot`, a name or YAML path)."""
        self.task = task
        self.env = env = make_env(task, 1, cfg if cfg is not None else default_cfg(task, robot), seed=seed)
        env.record_metrics = True
        self.cfg = env.cfg
        self.spec = env.spec
        self.gap = dict(gap or {})
        fixed = {c for e in env.startup_events.values() for c in e.columns}
        for name in self.gap:
            if name not in env.param_names:
                raise ConfigError(
                    f"reality gap: '{name}' is not a randomized parameter of {task} (have {list(env.param_names)})"
                )
            if name in fixed:
                raise ConfigError(
                    f"reality gap: '{name}' is baked into the model variants and cannot be pinned per robot"
                )
        self._gap_cols = [(env.param_names.index(k), float(v)) for k, v in self.gap.items()]
        self.has_base = env.robot.base_qadr >= 0
        self.joint_names: tuple[str, ...] = getattr(env, "joint_names", ())
        self.recorder = EpisodeRecorder(env.summary, 1, env.max_episode_steps, per_env=10**9)
        env.reset()
        self._apply_gap()

    @property
    def control_hz(self) -> float:
        return self.spec.control_hz

    def _apply_gap(self) -> None:
        if self._gap_cols:
            for col, value in self._gap_cols:
                self.env.params[:, col] = value
            self.env.apply_params(self.env.env_ids)

    @property
    def physics_dt_s(self) -> float:
        """Time between the points where `step` consults `between` (a physics step of a joint robot;
        a control period of the quadrotor, whose motor model runs at the control rate)."""
        return getattr(self.env, "physics_dt_s", 1.0 / self.control_hz)

    def step(self, command: np.ndarray, kp_scale: float = 1.0, kd: np.ndarray | None = None, between=None) -> bool:
        """One control period from `command` (spec units, actuator order). Joint robots: the drive's
        position gain times `kp_scale` and, when given, damping gains `kd` (N m s/rad) instead of its
        own. `between()`, if given, is called before each physics step and returns the newest
        (command, kp_scale, kd), applied from that physics step on, as a drive applies a new target
        at its own rate. Returns True when an episode ended (and the next one began)."""
        env = self.env
        pd = getattr(env, "pd", None)
        nominal = (pd.kp.clone(), pd.kd.clone()) if pd is not None else None

        def apply(cmd, kp_scale, kd):
            if pd is not None and nominal is not None:
                pd.kp.copy_(nominal[0] * kp_scale)
                pd.kd.copy_(
                    nominal[1] if kd is None else torch.as_tensor(np.asarray(kd), dtype=pd.kd.dtype).expand_as(pd.kd)
                )
            return torch.as_tensor(np.asarray(cmd, dtype=np.float32).reshape(1, -1), device=env.device)

        first = apply(command, kp_scale, kd)
        if between is not None:
            env.physics_step_hook = lambda current: apply(*between())
        try:
            _, _, terminated, truncated, extras = env.step_command(first)
        finally:
            env.physics_step_hook = None
        ended = bool(terminated[0] or truncated[0])
        if pd is not None and nominal is not None and not ended:  # a new episode has drawn its own gains
            pd.kp.copy_(nominal[0])
            pd.kd.copy_(nominal[1])
        self.recorder.add(extras["metrics"], extras["reasons"], terminated, truncated)
        if ended:
            self._apply_gap()
        return ended

    def readings(self) -> dict[str, np.ndarray]:
        """What the robot's sensors report now (noise-free), keyed as deploy.signals.READINGS: the same
        readings code as the training env's, on the backend's float64 state."""
        b = self.env.backend
        r = robot_readings(self.env.robot, b.qpos[:1], b.qvel[:1], b.sensordata[:1])
        return {k: v[0].numpy().copy() for k, v in r.items() if k != "base_rotmat"}

    def operator(self) -> dict[str, np.ndarray]:
        """What the operator asks of the robot now (the task's command or target, as drawn: the policy's side
        rate-limits a command as training did, PolicySpec.extra.command_max_rate)."""
        r, drawn = self.env.readings, {c.reading: c.target for c in self.env.commands.values()}
        return {k: drawn.get(k, r[k])[0].double().numpy() for k in ("command", "target_pos_w") if k in r}

    def close(self) -> None:
        self.env.close()
