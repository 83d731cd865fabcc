"""The critic's privileged observation terms: `fn(env) -> (num_envs, k)`, true state the robot cannot
sense. The critic group is the policy's observations, the sensed terms without noise or bias, the
terms a task's config lists in `critic` (these), then every randomized parameter (`env.params`)."""

from __future__ import annotations

from sim.terms import registry


def base_lin_vel_b(env):
    return env.readings["base_lin_vel_b"]


def base_height(env):
    return env.readings["base_pos_w"][:, 2:3]


def foot_force(env):
    """Foot contact forces, in units of 50 N (about a small quadruped's weight on one foot)."""
    return env.readings["foot_force_N"] / 50.0


def rotor_thrust(env):
    """The rotors' thrust, as a fraction of the most each can produce."""
    return env.rotors.thrust_N / env.rotors.max_thrust_N


def ee_pos(env):
    return env.readings["ee_pos_w"]


def ee_quat(env):
    return env.readings["ee_quat_wxyz"]


def ee_to_target(env):
    r = env.readings
    return r["target_pos_w"] - r["ee_pos_w"]


CRITIC_TERMS = registry(base_lin_vel_b, base_height, foot_force, rotor_thrust, ee_pos, ee_quat, ee_to_target)
