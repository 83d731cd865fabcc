"""The left-right mirror image of a legged robot's observations and actions, for symmetry augmentation
(Mittal et al. 2024; rsl_rl's symmetry module): every sample the robot collects also teaches the
policy and the critic what it would see and should do in the mirrored world (y -> -y in the base frame).

A group's mirror is `(index (k,), sign (k,))`: `mirrored[:, i] = sign[i] * x[:, index[i]]`. Each column
is found by name: its signal (an observation term, a critic term, a randomized parameter) says how it
mirrors, its component (an axis, a joint, a foot) which column it trades places with. The robot config's
`mirror` names the joint and foot pairs (config.robot.MirrorCfg).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

import torch

from config.robot import MirrorCfg
from config.validate import ConfigError
from deploy.spec import PolicySpec
from sim.terms.events import XYZ

Rule = Callable[[str, MirrorCfg], tuple[str, float]]  # component -> (its mirror image, sign)


def _axes(signs: dict[str, float]) -> Rule:
    def rule(component: str, _m: MirrorCfg) -> tuple[str, float]:
        return component, signs[component]

    return rule


polar = _axes({"x": 1.0, "y": -1.0, "z": 1.0})  # a vector: velocity, gravity, a position
axial = _axes({"x": -1.0, "y": 1.0, "z": -1.0})  # a rotation: angular velocity
planar_velocity = _axes({"lin_vel_x": 1.0, "lin_vel_y": -1.0, "yaw_rate": -1.0})  # the velocity command


def even(component: str, _m: MirrorCfg) -> tuple[str, float]:
    return component, 1.0


def joints(component: str, m: MirrorCfg) -> tuple[str, float]:
    return m.image(component), -1.0 if component in m.negate else 1.0


def feet(component: str, m: MirrorCfg) -> tuple[str, float]:
    return m.image(component), 1.0


# How each signal mirrors, by name: the policy's observation terms (PolicySpec), the critic's terms
# (sim/terms/observations.py) and the scalars events draw per env (sim/terms/events.py).
SIGNALS: dict[str, Rule] = {
    "ang_vel_b": axial,
    "projected_gravity": polar,
    "command": planar_velocity,
    "joint_pos_rel": joints,
    "joint_vel": joints,
    "last_action": joints,
    "base_lin_vel_b": polar,
    "base_height": even,
    "foot_force": feet,
    **dict.fromkeys(("friction", "payload_kg", "kp_scale", "kd_scale", "motor_strength", "latency_steps"), even),
}
CRITIC_COMPONENTS: dict[str, Callable[[tuple[str, ...]], tuple[str, ...]]] = {  # foot names -> components
    "base_lin_vel_b": lambda _feet: XYZ,
    "base_height": lambda _feet: ("z",),
    "foot_force": lambda feet: feet,
}
_VECTOR_PARAM = re.compile(r"(payload_com|disturbance)_([xyz])_(m|N)")  # events' per-axis columns


def mirrored(x: torch.Tensor, group: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """`(n, k)` rows `x` of one group as their mirror images, by the group's `(index, sign)`."""
    index, sign = group
    return x[:, index] * sign


Column = tuple[Rule, str, str]  # (rule, component, key pattern: {} stands for the component)


def _signal(name: str, group: str) -> Rule:
    if name not in SIGNALS:
        raise ConfigError(f"symmetry: no mirror rule for the {group}'s '{name}' (the rules: sim/symmetry.py SIGNALS)")
    return SIGNALS[name]


def _param(name: str) -> Column:
    """A randomized parameter's column: a per-env scalar, an axis of a vector, or a sensor bias, which
    mirrors as the term it offsets (events.sensor_bias)."""
    vector = _VECTOR_PARAM.fullmatch(name)
    if vector:
        return polar, vector.group(2), f"param/{vector.group(1)}_{{}}_{vector.group(3)}"
    for signal in SIGNALS:
        prefix = f"{signal}_bias_"
        if name.startswith(prefix):
            return SIGNALS[signal], name.removeprefix(prefix), f"param/{prefix}{{}}"
    return _signal(name, "randomized parameters"), "", f"param/{name}"


def mirror_maps(
    spec: PolicySpec,
    noisy_terms: Sequence[str],
    critic_terms: Sequence[str],
    param_names: Sequence[str],
    feet_names: tuple[str, ...],
    m: MirrorCfg,
) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{"policy", "critic", "action"}: each group's mirror, its columns laid out as the env builds them
    (policy: the spec's terms, each frame of their history; critic: the policy's, the noisy terms without
    noise, the critic terms, the randomized parameters)."""
    terms = {t.name: t for t in spec.obs}
    policy = [
        (_signal(t.name, "policy"), c, f"policy/{t.name}[{k}]/{{}}")
        for t in spec.obs
        for k in range(t.history)
        for c in t.names
    ]
    true = [(_signal(n, "critic"), c, f"true/{n}/{{}}") for n in noisy_terms for c in terms[n].names]
    privileged = [
        (_signal(n, "critic"), c, f"critic/{n}/{{}}")
        for n in critic_terms
        for c in (CRITIC_COMPONENTS[n](feet_names) if n in CRITIC_COMPONENTS else ("",))
    ]
    params = [_param(n) for n in param_names]
    action = [(joints, c, "action/{}") for c in spec.action.names]
    return {
        "policy": _map(policy, m, "policy"),
        "critic": _map(policy + true + privileged + params, m, "critic"),
        "action": _map(action, m, "action"),
    }


def _map(columns: Sequence[Column], m: MirrorCfg, group: str) -> tuple[torch.Tensor, torch.Tensor]:
    keys = {pattern.format(component): i for i, (_r, component, pattern) in enumerate(columns)}
    index, sign = [], []
    for rule, component, pattern in columns:
        image, s = rule(component, m)
        if pattern.format(image) not in keys:
            raise ConfigError(
                f"symmetry: the {group}'s '{pattern.format(component)}' mirrors to '{pattern.format(image)}', "
                f"which the {group} lacks"
            )
        index.append(keys[pattern.format(image)])
        sign.append(s)
    return torch.tensor(index), torch.tensor(sign)
