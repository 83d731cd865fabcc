"""Reward terms: `fn(env, **params) -> (num_envs,)`, from the env's readings (sim.readings, plus the
operator's `command` or `target_pos_w`) and its actions. A task's config weighs them (RewardTerm);
the env sums `weight * dt * fn` each step. Names follow legged_gym and mjlab: `_l2` a sum of squares,
`_exp` a Gaussian kernel that is 1 when tracking exactly."""

from __future__ import annotations

import torch

from deploy.rotations import projected_gravity
from sim.terms import registry


def _sum_sq(x: torch.Tensor, cap: float | None) -> torch.Tensor:
    """Sum of squares over the last axis, capped at `cap` where given: a tumbling robot would otherwise
    earn returns so negative that one batch of them blows up the PPO update."""
    s = x.square().sum(-1)
    return s if cap is None else s.clamp(max=cap)


# --- being alive, ending ---------------------------------------------------------------------------
def alive(env):
    return torch.ones(env.num_envs, device=env.device)


def termination(env):
    """1 on the step an episode ends by a termination (fall, crash), for a one-off penalty."""
    return env.terminated.float()


# --- reaching a position ---------------------------------------------------------------------------
def base_pos_error(env):
    """Distance of the base to the target, m."""
    r = env.readings
    return (r["base_pos_w"] - r["target_pos_w"]).norm(dim=-1)


def base_pos_precision(env, radius_m: float):
    """1 at the target, falling off within `radius_m`: rewards holding position closely."""
    r = env.readings
    return torch.exp(-((r["base_pos_w"] - r["target_pos_w"]).square().sum(-1) / radius_m**2))


def ee_pos_error(env):
    """Distance of the end effector to the target, m."""
    r = env.readings
    return (r["target_pos_w"] - r["ee_pos_w"]).norm(dim=-1)


def ee_pos_precision(env, radius_m: float):
    return torch.exp(-ee_pos_error(env).square() / radius_m**2)


# --- tracking a velocity command (command: lin_vel_x, lin_vel_y, yaw_rate) ------------------------------
def track_lin_vel_xy_exp(env, sigma_mps: float):
    r = env.readings
    err = (r["command"][:, :2] - r["base_lin_vel_b"][:, :2]).square().sum(-1)
    return torch.exp(-err / sigma_mps**2)


def track_ang_vel_z_exp(env, sigma_radps: float):
    r = env.readings
    err = (r["command"][:, 2] - r["base_ang_vel_b"][:, 2]).square()
    return torch.exp(-err / sigma_radps**2)


# --- base motion -----------------------------------------------------------------------------------
def base_lin_vel_l2(env, cap: float | None = None):
    return _sum_sq(env.readings["base_lin_vel_w"], cap)


def base_ang_vel_l2(env, cap: float | None = None):
    return _sum_sq(env.readings["base_ang_vel_b"], cap)


def base_lin_vel_z_l2(env):
    return env.readings["base_lin_vel_b"][:, 2].square()


def base_ang_vel_xy_l2(env):
    return env.readings["base_ang_vel_b"][:, :2].square().sum(-1)


def upright_error(env):
    """1 - cos(tilt): 0 upright, 2 upside down."""
    return 1.0 - env.readings["base_rotmat"][:, 2, 2]


def flat_orientation_l2(env):
    """Gravity's share in the base's xy plane."""
    return projected_gravity(env.readings["base_rotmat"])[:, :2].square().sum(-1)


# --- joints and actions ----------------------------------------------------------------------------
def joint_torques_l2(env):
    return env.readings["joint_effort"].square().sum(-1)


def joint_vel_l2(env):
    return env.readings["joint_vel"].square().sum(-1)


def joint_acc_l2(env):
    return ((env.readings["joint_vel"] - env.prev_joint_vel) / env.control_dt_s).square().sum(-1)


def joint_pos_limits(env, soft_fraction: float):
    """How far the joints are beyond the middle `soft_fraction` of their ranges, rad."""
    low, high = env.joint_low_t, env.joint_high_t
    mid, half = (low + high) / 2, (high - low) / 2 * soft_fraction
    q = env.readings["joint_pos"]
    return ((mid - half - q).clamp(min=0) + (q - mid - half).clamp(min=0)).sum(-1)


def action_l2(env):
    return env.action.square().sum(-1)


def action_rate_l2(env):
    return (env.action - env.prev_action).square().sum(-1)


# --- feet ------------------------------------------------------------------------------------------
def feet_air_time(env, target_s: float, min_command_mps: float = 0.1):
    """Steps that last about `target_s` (legged_gym): on each touchdown, the air time before it minus
    `target_s`; only while asked to move faster than `min_command_mps`."""
    r = ((env.air_time_at_touchdown_s - target_s) * env.feet_touchdown).sum(-1)
    return r * (env.readings["command"][:, :2].norm(dim=-1) > min_command_mps)


REWARDS = registry(
    alive,
    termination,
    base_pos_error,
    base_pos_precision,
    ee_pos_error,
    ee_pos_precision,
    track_lin_vel_xy_exp,
    track_ang_vel_z_exp,
    base_lin_vel_l2,
    base_ang_vel_l2,
    base_lin_vel_z_l2,
    base_ang_vel_xy_l2,
    upright_error,
    flat_orientation_l2,
    joint_torques_l2,
    joint_vel_l2,
    joint_acc_l2,
    joint_pos_limits,
    action_l2,
    action_rate_l2,
    feet_air_time,
)
