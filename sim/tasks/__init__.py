"""Task registry: a task is a config dataclass plus the env class that reads it."""

from __future__ import annotations

from sim.config import ConfigError, validate
from sim.tasks.quadrotor_hover import QuadrotorHoverCfg, QuadrotorHoverEnv

TASKS = {
    "quadrotor-hover": (QuadrotorHoverCfg, QuadrotorHoverEnv),
}


class UnknownTaskError(KeyError):
    def __str__(self) -> str:
        return self.args[0]


def task_entry(name: str):
    if name not in TASKS:
        raise UnknownTaskError(f"unknown task '{name}'; available tasks: {', '.join(sorted(TASKS))}")
    return TASKS[name]


def default_cfg(name: str):
    return task_entry(name)[0]()


def make_env(name: str, num_envs: int, cfg=None, device="cpu", seed: int = 0):
    cfg_cls, env_cls = task_entry(name)
    cfg = cfg_cls() if cfg is None else cfg
    if not isinstance(cfg, cfg_cls):
        raise ConfigError(f"task '{name}' takes a {cfg_cls.__name__}, got {type(cfg).__name__}")
    validate(cfg, prefix="task.")
    return env_cls(cfg, num_envs=num_envs, device=device, seed=seed)
