"""Batched physics backends. Each holds `num_envs` copies of one MuJoCo model and exposes their state
as torch tensors `(num_envs, ...)`; tasks never touch MjData directly."""

from sim.backends.mujoco_cpu import MujocoCpuBackend, physics_substeps

BACKENDS = {"mujoco": MujocoCpuBackend}
__all__ = ["BACKENDS", "make_backend", "physics_substeps"]


def make_backend(name: str, *args, **kwargs):
    if name not in BACKENDS:
        raise ValueError(f"unknown backend '{name}'; available: {sorted(BACKENDS)}")
    return BACKENDS[name](*args, **kwargs)
