"""Batched physics backends. Each holds `num_envs` copies of one MuJoCo model and exposes their state
as torch tensors `(num_envs, ...)`; tasks never touch MjData directly.

- cpu: native MuJoCo through `mujoco.rollout` on threads (mujoco_cpu.py).
- warp: MuJoCo Warp on a Warp device, CUDA when present (mujoco_warp.py); warp is imported only here,
  when it is chosen, so the cpu backend takes no GPU memory.
- auto: warp when torch sees CUDA, else cpu.
"""

from __future__ import annotations

import mujoco
import torch

from config.validate import ConfigError
from sim.backends.mujoco_cpu import MujocoCpuBackend, physics_substeps

BACKEND_NAMES = ("cpu", "warp", "auto")
# "mujoco": the CPU backend's name in configs and code written before the warp backend
ALIASES = {"mujoco": "cpu"}
__all__ = ["BACKEND_NAMES", "BackendError", "check_backend_name", "make_backend", "physics_substeps", "resolve_backend"]


class BackendError(ConfigError):
    """A backend cannot run here or cannot run this model; the message names what and why."""


def check_backend_name(name: str) -> bool:
    """For config fields that name a backend."""
    return name in BACKEND_NAMES or name in ALIASES


def resolve_backend(name: str) -> str:
    """The backend a name (or an alias) stands for here: cpu or warp."""
    name = ALIASES.get(name, name)
    if name not in BACKEND_NAMES:
        raise BackendError(f"unknown backend '{name}'; available: {', '.join(BACKEND_NAMES)}")
    if name == "auto":
        return "warp" if torch.cuda.is_available() else "cpu"
    return name


def make_backend(
    name: str, model: mujoco.MjModel, num_envs: int, model_variants: int = 1, device: str | torch.device = "cpu"
):
    """The backend `name` for `num_envs` worlds of `model`. `device`: the env's torch device; the warp
    backend runs on it when it is a CUDA device, else on CUDA when present (the env's tensors are
    copied to it)."""
    if resolve_backend(name) == "cpu":
        return MujocoCpuBackend(model, num_envs, model_variants=model_variants)
    try:
        from sim.backends.mujoco_warp import MujocoWarpBackend
    except ImportError as e:
        raise BackendError(
            f"backend 'warp' needs the mujoco-warp package, which the default set-up installs "
            f"(./setup.sh, or pip install -e .): {e}"
        ) from e
    device = torch.device(device)
    warp_device = str(device) if device.type == "cuda" else None
    return MujocoWarpBackend(model, num_envs, model_variants=model_variants, device=warp_device)
