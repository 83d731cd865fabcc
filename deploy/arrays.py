"""The few array operations deploy code needs, for numpy arrays and torch tensors alike.

Training runs the observation builder and action mapper on batched torch tensors and the robot runs
them on numpy arrays; one implementation serves both, so they cannot drift apart. torch is only
touched when the caller passes torch tensors.
"""

from __future__ import annotations

import numpy as np


def is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def concat(arrays: list, axis: int = -1):
    if is_torch(arrays[0]):
        import torch

        return torch.cat(arrays, dim=axis)
    return np.concatenate(arrays, axis=axis)


def constant_like(values, like):
    """`values` as an array of `like`'s kind, dtype and device."""
    if is_torch(like):
        import torch

        return torch.as_tensor(np.asarray(values), dtype=like.dtype, device=like.device)
    return np.asarray(values, dtype=like.dtype)


def stack(arrays: list, axis: int = -1):
    if is_torch(arrays[0]):
        import torch

        return torch.stack(arrays, dim=axis)
    return np.stack(arrays, axis=axis)


def step_toward(value, target, max_step):
    """`value` moved toward `target` by at most `max_step` per element (a rate limiter's one step)."""
    return value + (target - value).clip(-max_step, max_step)
