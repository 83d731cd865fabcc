"""Termination terms: `fn(env, **params) -> (num_envs,)` bool, True where the episode ends for that
reason (a task names each reason: crash, fall...). The time limit is the task's `episode_s`."""

from __future__ import annotations

from deploy.rotations import projected_gravity
from sim.terms import registry


def base_below(env, height_m: float):
    """The base's origin below `height_m` (a crash, or a fallen trunk)."""
    return env.readings["base_pos_w"][:, 2] < height_m


def base_tilted(env, min_up_cos: float):
    """The base's z axis more than acos(`min_up_cos`) from vertical."""
    return -projected_gravity(env.readings["base_rotmat"])[:, 2] < min_up_cos


def base_far_from_target(env, max_error_m: float):
    """The base more than `max_error_m` from the target along any axis."""
    r = env.readings
    return (r["base_pos_w"] - r["target_pos_w"]).abs().amax(-1) > max_error_m


TERMINATIONS = registry(base_below, base_tilted, base_far_from_target)
