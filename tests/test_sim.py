"""CPU backend and the quadrotor-hover task: stepping, resets, observations, randomization, faults."""

import dataclasses

import numpy as np
import pytest
import torch

from sim.backends import physics_substeps
from sim.backends.mujoco_cpu import ModelError, MujocoCpuBackend
from sim.robots import ROBOTS_DIR
from sim.tasks import default_cfg, make_env

MODEL = ROBOTS_DIR / "crazyflie.xml"


def test_backend_steps_all_envs_and_resets_some():
    b = MujocoCpuBackend(MODEL, num_envs=8, nthread=2)
    assert b.qpos.shape == (8, 7) and b.qvel.shape == (8, 6) and b.ctrl.shape == (8, 4)
    z0 = b.qpos[:, 2].clone()
    for _ in range(round(0.1 / b.model.opt.timestep)):
        b.step()  # no thrust: 0.1 s of free fall
    assert torch.all(b.qpos[:, 2] < z0 - 0.04)
    assert torch.all(b.qvel[:, 2] < -0.9)
    ids = torch.tensor([1, 5])
    qpos = torch.tensor([[0.0, 0.0, 2.0, 1.0, 0.0, 0.0, 0.0]] * 2, dtype=torch.float64)
    b.reset(ids, qpos, torch.zeros(2, 6, dtype=torch.float64))
    assert torch.allclose(b.qpos[ids, 2], torch.tensor(2.0, dtype=torch.float64))
    assert torch.all(b.qvel[ids] == 0) and torch.all(b.qvel[0, 2] < -0.9)
    b.ctrl[:] = 0.027 * 9.81 / 4  # hover thrust per rotor
    v = b.qvel[ids, 2].clone()
    b.step()
    assert torch.allclose(b.qvel[ids, 2], v, atol=1e-9)
    b.close()


def test_backend_rejects_bad_models(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        MujocoCpuBackend(tmp_path / "nope.xml", 2)
    bad = tmp_path / "bad.xml"
    bad.write_text("<mujoco><worldbody><body><geom type='sphere'/></body></worldbody></mujoco>")
    with pytest.raises(ModelError, match="does not compile"):
        MujocoCpuBackend(bad, 2)
    with pytest.raises(ModelError, match="not a whole multiple"):
        physics_substeps(MujocoCpuBackend(MODEL, 2).model, 0.0101)


def test_observation_groups_have_spec_shapes():
    env = make_env("quadrotor-hover", 16)
    obs = env.reset()
    spec = env.spec
    assert obs["policy"].shape == (16, spec.obs_dim)
    # critic: the policy obs, its 18 sensed quantities without noise, rotor thrusts, every randomized parameter
    assert obs["critic"].shape == (16, spec.obs_dim + 18 + 4 + len(env.param_names))
    assert torch.equal(obs["critic"][:, : spec.obs_dim], obs["policy"])
    obs, reward, terminated, truncated, _ = env.step(torch.zeros(16, 4))
    assert reward.shape == terminated.shape == truncated.shape == (16,)
    assert [t.name for t in spec.obs] == ["pos_error_b", "rot_mat", "lin_vel_b", "ang_vel_b", "last_action"]
    env.close()


def test_policy_obs_is_noisy_and_critic_obs_is_clean():
    env = make_env("quadrotor-hover", 64)
    obs = env.reset()
    n = env.spec.obs_dim
    pos_clean = obs["critic"][:, n : n + 3]
    r = env.readings
    expected = (r["base_rotmat"].transpose(1, 2) @ (r["base_pos_w"] - r["target_pos_w"]).unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(pos_clean, expected, atol=1e-6)
    assert (obs["policy"][:, :3] - pos_clean).abs().mean() > 1e-3
    env.close()


def test_randomization_changes_parameters_and_critic_sees_them():
    env = make_env("quadrotor-hover", 256, seed=3)
    obs = env.reset()
    params = env.params.clone()
    names = env.param_names
    # every value the events draw is a named column, in the config's order
    assert names[:4] == ("mass_scale", "thrust_scale", "motor_tau_s", "latency_steps")
    assert names[-3:] == ("disturbance_x_N", "disturbance_y_N", "disturbance_z_N")
    events = env.cfg.events
    ranges = {
        "mass_scale": events["mass"].params["scale"],
        **dict(
            zip(
                ("thrust_scale", "motor_tau_s"),
                (events["rotors"].params["thrust_scale"], events["rotors"].params["motor_tau_s"]),
                strict=True,
            )
        ),
    }
    for name, (lo, hi) in ranges.items():
        col = params[:, names.index(name)]
        assert col.min() >= lo and col.max() <= hi
        assert col.std() > 0.1 * (hi - lo) / np.sqrt(12)
    assert set(params[:, names.index("latency_steps")].unique().tolist()) == {0.0, 1.0, 2.0}
    # the critic's last columns are exactly the parameters
    assert torch.equal(obs["critic"][:, -len(names) :], params)
    env._reset(env.env_ids)
    assert not torch.equal(env.params, params)
    env.close()


def test_mass_and_thrust_randomization_change_the_dynamics():
    cfg = default_cfg("quadrotor-hover")
    init = dataclasses.replace(cfg.init, pos_m=0.0, lin_vel_mps=0.0, tilt_rad=0.0, ang_vel_radps=0.0)
    cfg = dataclasses.replace(cfg, init=init, curricula={})
    env = make_env("quadrotor-hover", 3, cfg)
    env.reset()
    names = env.param_names
    env.params[:, names.index("mass_scale")] = torch.tensor([1.0, 1.2, 1.0])
    env.params[:, names.index("thrust_scale")] = torch.tensor([1.0, 1.0, 1.2])
    i_dist = names.index("disturbance_x_N")
    env.params[:, i_dist : i_dist + 3] = 0.0
    env.apply_params(env.env_ids)
    env.rotors.reset(env.env_ids, torch.full((3, 4), 0.027 * 9.81 / 4))
    for _ in range(50):
        env.step(torch.zeros(3, 4))
    vz = env.readings["base_lin_vel_w"][:, 2]
    assert abs(vz[0]) < 0.02  # nominal: hover thrust holds
    assert vz[1] < -0.5  # 20 % heavier: falls
    assert vz[2] > 0.5  # 20 % more thrust: climbs
    env.close()


def test_latency_delays_commands():
    cfg = default_cfg("quadrotor-hover")
    env = make_env("quadrotor-hover", 2, cfg)
    env.reset()
    env.latency_steps[:] = torch.tensor([0, 2])
    env.rotors.set_params(env.env_ids, torch.full((2,), 1e-4), torch.ones(2))  # near-instant motors
    hover = env.spec.action.offset[0]
    env.step(torch.full((2, 4), 0.5))
    thrust = env.rotors.thrust_N
    assert thrust[0, 0] > hover + 0.03 and abs(thrust[1, 0] - hover) < 1e-6
    env.step(torch.full((2, 4), 0.5))
    env.step(torch.full((2, 4), 0.5))
    assert thrust[1, 0] > hover + 0.03
    env.close()


def test_nan_in_simulation_resets_that_env_and_is_counted():
    env = make_env("quadrotor-hover", 4)
    env.reset()
    env.backend.qvel[2, 0] = float("nan")
    obs, reward, terminated, truncated, extras = env.step(torch.zeros(4, 4))
    assert terminated[2] and not terminated[[0, 1, 3]].any()
    assert env.nan_resets == 1 and extras["episode"]["end/nan"] == 1.0
    assert torch.isfinite(obs["policy"]).all() and torch.isfinite(reward).all()
    assert torch.isfinite(env.backend.qvel).all()
    env.close()


def test_spread_episodes_end_over_time_not_at_once():
    """Started at random steps of their first episode, envs reach the time limit one by one; started
    together (as evaluation starts them), all at one step."""
    cfg = dataclasses.replace(default_cfg("quadrotor-hover"), episode_s=0.2)  # 10 steps at 50 Hz
    for spread in (False, True):
        env = make_env("quadrotor-hover", 64, cfg, seed=1)
        env.reset(spread_episodes=spread)
        start = env.episode_step.clone()
        assert (start == 0).all() != spread and int(start.max()) < env.max_episode_steps
        assert torch.equal(env.episode_start_step, start)
        env.backend.model.opt.gravity[:] = 0  # nothing falls: every episode ends at the time limit
        ends, lengths_s = [], []
        for _ in range(env.max_episode_steps):
            _, _, _, truncated, extras = env.step(torch.zeros(64, 4))
            ends.append(int(truncated.sum()))
            if ends[-1]:
                lengths_s.append(extras["episode"]["length_s"])
        assert sum(ends) == 64
        # the stats count the steps an episode ran: the cut first episodes are shorter, on average
        assert (min(lengths_s) > 0.19) != spread and min(lengths_s) > 0 and max(lengths_s) < 0.21, lengths_s
        assert (max(ends) == 64) != spread and (sum(e > 0 for e in ends) >= 5) == spread, ends
        env.close()


def test_crash_and_out_of_bounds_terminate():
    env = make_env("quadrotor-hover", 2)
    env.reset()
    qpos = env.backend.qpos.clone()
    qpos[0, :3] = torch.tensor([0.0, 0.0, 0.01], dtype=torch.float64)
    qpos[1, :3] = torch.tensor([3.0, 0.0, 1.0], dtype=torch.float64)
    env.backend.reset(env.env_ids, qpos, torch.zeros(2, 6, dtype=torch.float64))
    env._update_state()
    _, _, terminated, _, extras = env.step(torch.zeros(2, 4))
    assert terminated.all()
    assert extras["episode"]["end/crash"] == 0.5 and extras["episode"]["end/out_of_bounds"] == 0.5
    env.close()


def test_quat_to_rotmat_matches_mujoco():
    import mujoco

    from deploy.rotations import quat_to_rotmat

    q = torch.randn(64, 4, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    ours = quat_to_rotmat(q).numpy()
    for i in range(len(q)):
        ref = np.zeros(9)
        mujoco.mju_quat2Mat(ref, q[i].numpy())
        np.testing.assert_allclose(ours[i], ref.reshape(3, 3), atol=1e-12)


def test_unknown_terms_and_parameters_are_named():
    from config.validate import ConfigError
    from sim.terms import EventTerm, RewardTerm

    cfg = default_cfg("quadrotor-hover")
    bad = [
        (
            dataclasses.replace(cfg, rewards={**cfg.rewards, "flips": RewardTerm("backflips", 2.0)}),
            "task.rewards.flips.func: no reward 'backflips'",
        ),
        (
            dataclasses.replace(cfg, rewards={**cfg.rewards, "prec": RewardTerm("base_pos_precision", 1.0)}),
            "task.rewards.prec.params: reward 'base_pos_precision' needs radius_m",
        ),
        (
            dataclasses.replace(cfg, rewards={**cfg.rewards, "tilt": RewardTerm("upright_error", 1.0, {"gain": 2.0})}),
            "task.rewards.tilt.params.gain: reward 'upright_error' takes no parameter",
        ),
        (
            dataclasses.replace(cfg, events={**cfg.events, "wind": EventTerm("wind")}),
            "task.events.wind.func: no event 'wind'",
        ),
        (
            dataclasses.replace(
                cfg, events={**cfg.events, "bias": EventTerm("sensor_bias", {"term": "joint_pos_rel", "bias": 0.1})}
            ),
            "sensor_bias: the policy has no observation term 'joint_pos_rel'",
        ),
        (
            dataclasses.replace(cfg, events={**cfg.events, "mass2": EventTerm("mass_scale")}),
            r"two events randomize \['mass_scale'\]",
        ),
        (dataclasses.replace(cfg, critic=("rotor_thrust", "x_ray")), "task.critic: no critic term 'x_ray'"),
        (
            dataclasses.replace(cfg, curricula={"command_range": cfg.curricula["init_state"]}),
            "task.curricula.command_range: this task has no level",
        ),
    ]
    for c, message in bad:
        with pytest.raises(ConfigError, match=message):
            make_env("quadrotor-hover", 2, c)


def test_terms_are_overridden_by_dotted_path():
    from config.validate import ConfigError, override

    cfg = override(default_cfg("quadrotor-hover"), "rewards.pos_precision.params.radius_m", "0.05")
    cfg = override(cfg, "events.mass.params.scale", "(1.0, 1.3)")
    assert cfg.rewards["pos_precision"].params["radius_m"] == 0.05 and cfg.events["mass"].params["scale"] == (1.0, 1.3)
    env = make_env("quadrotor-hover", 64, cfg)
    env.reset()
    assert env.param("mass_scale").min() >= 1.0
    env.close()
    with pytest.raises(ConfigError, match="unknown config key 'task.rewards.backflips'"):
        override(cfg, "rewards.backflips.weight", "1.0", prefix="task.")
