"""Tasks declared as terms (sim/terms/): a variant of a task is a config, not code; every term is
checked before anything runs; what the events draw reaches the critic by name."""

import dataclasses

import pytest
import torch

from config.validate import ConfigError, from_dict, override, to_dict
from sim.tasks import default_cfg, make_env, task_entry
from sim.terms import CommandTerm, CurriculumTerm, EventTerm, RewardTerm, TerminationTerm


def test_a_task_variant_is_a_config():
    """The walk with a new reward, a termination dropped, a constant push force instead of kicks and a
    standing-only command: built from terms alone, each doing what it says."""
    cfg = default_cfg("quadruped-walk")
    events = {k: v for k, v in cfg.events.items() if k != "push"}
    events["wind"] = EventTerm("base_force", {"force_N": 5.0})
    cfg = dataclasses.replace(
        cfg,
        model_variants=1,
        rewards={**cfg.rewards, "stay_low": RewardTerm("base_lin_vel_l2", -0.1, {"cap": 1.0})},
        terminations={"fall": cfg.terminations["fall"]},
        events=events,
        commands={"base_velocity": CommandTerm("velocity_command", {"standing_fraction": 1.0})},
        curricula={},
    )
    env = make_env("quadruped-walk", 16, cfg)
    obs = env.reset()
    assert list(env.termination_terms) == ["fall"] and "stay_low" in env.reward_terms and not env.interval_events
    assert env.param_names[-3:] == ("disturbance_x_N", "disturbance_y_N", "disturbance_z_N")
    assert torch.equal(obs["critic"][:, -len(env.param_names) :], env.params)
    force = env.backend.xfrc_applied[:, env.robot.base_body, :3]
    assert torch.allclose(force.float(), env.params[:, -3:]) and force.abs().max() > 1.0
    assert (env.readings["command"] == 0).all()  # every command stands still
    _, reward, *_ = env.step(torch.zeros(16, 12))
    assert torch.isfinite(reward).all()
    env.close()


def test_term_configs_round_trip_through_a_checkpoint_dict():
    for name in ("quadrotor-hover", "quadruped-walk", "arm-reach"):
        cfg = default_cfg(name)
        assert from_dict(task_entry(name).cfg, to_dict(cfg)) == cfg


def test_a_term_needing_a_reading_the_robot_lacks_is_named_before_anything_runs():
    cfg = default_cfg("arm-reach")
    cfg = dataclasses.replace(cfg, rewards={**cfg.rewards, "hover": RewardTerm("base_pos_error", -1.0)})
    with pytest.raises(ConfigError, match="task.rewards.hover: needs 'base_pos_w', which robot 'ur5e'"):
        make_env("arm-reach", 2, cfg).reset()
    cfg = dataclasses.replace(
        default_cfg("arm-reach"), terminations={"fell": TerminationTerm("base_tilted", {"min_up_cos": 0.5})}
    )
    with pytest.raises(ConfigError, match="task.terminations.fell: needs 'base_rotmat'"):
        make_env("arm-reach", 2, cfg).reset()
    cfg = dataclasses.replace(default_cfg("quadruped-walk"), events={"mass": EventTerm("mass_scale")})
    with pytest.raises(ConfigError, match="mass_scale: .* not a legged robot; use base_payload"):
        make_env("quadruped-walk", 2, cfg)
    cfg = dataclasses.replace(
        default_cfg("quadruped-walk"), curricula={"command_range": CurriculumTerm("reward_share", {"reward": "speed"})}
    )
    with pytest.raises(ConfigError, match="reward_share: no reward term 'speed'"):
        make_env("quadruped-walk", 2, cfg)


def test_curriculum_moves_and_evaluation_runs_without_it():
    """A level decides once `window_episodes` episodes have ended, however many envs ran them."""
    cfg = override(default_cfg("quadrotor-hover"), "curricula.init_state.params.step", 0.25)
    cfg = override(cfg, "curricula.init_state.params.window_episodes", 16)
    env = make_env("quadrotor-hover", 8, cfg)
    env.reset()
    assert env.level("init_state") == 0.3
    assert env._after_iteration({"count": 8, "end/timeout": 1.0}) == {"curriculum/init_state": 0.3}  # 8 of 16
    logged = env._after_iteration({"count": 8, "end/timeout": 1.0})
    assert logged == {"curriculum/init_state": 0.55} and env.level("init_state") == 0.55
    env._after_iteration({"count": 20, "end/timeout": 0.0})
    assert env.level("init_state") == pytest.approx(0.3)  # back down, and not below the start
    state = env.state_dict()
    env._after_iteration({"count": 16, "end/timeout": 1.0})
    env.load_state_dict(state)
    assert env.level("init_state") == pytest.approx(0.3)
    env.close()
    no_curriculum = make_env("quadrotor-hover", 2, dataclasses.replace(cfg, curricula={}))
    assert no_curriculum.level("init_state") == 1.0
    no_curriculum.close()
    with pytest.raises(ConfigError, match="timeout_rate: window_episodes must be >= 1"):
        make_env("quadrotor-hover", 2, override(cfg, "curricula.init_state.params.window_episodes", 0))


def test_sensor_bias_event_offsets_what_the_policy_sees_not_the_critic():
    cfg = default_cfg("arm-reach")
    noise = dataclasses.replace(cfg.noise, joint_pos_rad=0.0, joint_vel_radps=0.0)
    cfg = dataclasses.replace(
        cfg, noise=noise, events={"encoder_bias": EventTerm("sensor_bias", {"term": "joint_pos_rel", "bias": 0.05})}
    )
    env = make_env("arm-reach", 32, cfg)
    obs = env.reset()
    n_j = len(env.joint_names)
    assert env.param_names == tuple(f"joint_pos_rel_bias_{j}" for j in env.joint_names)
    sensed = obs["policy"][:, :n_j]  # joint_pos_rel is the arm's first term, scale 1
    true = obs["critic"][:, env.spec.obs_dim : env.spec.obs_dim + n_j]
    assert torch.allclose(sensed - true, env.params, atol=1e-6) and env.params.abs().max() > 0.02
    env.close()


def test_a_rate_limited_command_ramps_to_each_draw_and_starts_episodes_at_it():
    """The walk's command follows a new draw at max_rate (what the policy observes and the rewards track),
    starts each episode at its draw, and a bad max_rate is named before anything runs."""
    cfg = dataclasses.replace(default_cfg("quadruped-walk"), model_variants=1, curricula={})
    velocity = cfg.commands["base_velocity"]
    rate = torch.tensor(velocity.params["max_rate"])
    env = make_env("quadruped-walk", 8, cfg)
    env.reset()
    c = env.commands["base_velocity"]
    assert torch.equal(c.value, c.target)  # an episode starts at its draw
    max_step = rate / env.spec.control_hz
    prev, ramped = c.value.clone(), 0
    for _ in range(c.resample_steps + 10):
        env.step(torch.zeros(8, 12))
        started = env.episode_step == 0
        moved = (c.value - prev).abs()[~started]
        assert (moved <= max_step + 1e-6).all(), moved.max(0)
        ramped += int(((c.value - c.target).abs() > 1e-6).any(-1).sum())
        prev = c.value.clone()
    assert ramped > 0  # some draws took more than a step to reach
    assert env.spec.extra.command_max_rate == tuple(rate.tolist())  # the robot's side ramps it alike
    env.close()
    for bad in ((2.0, 2.0), (2.0, 0.0, 2.0)):
        params = {**velocity.params, "max_rate": bad}
        broken = dataclasses.replace(cfg, commands={"base_velocity": CommandTerm("velocity_command", params)})
        with pytest.raises(ConfigError, match=r"task\.commands\.base_velocity\.params\.max_rate"):
            make_env("quadruped-walk", 2, broken)
