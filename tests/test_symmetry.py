"""Symmetry augmentation (sim/symmetry.py, `--ppo.symmetry`): the mirror of every observation and action
column is right, as the physics says; the update learns from each sample and its mirror image; a robot
without a mirror, or a mirror that does not fit the robot, is named before anything trains."""

import dataclasses

import pytest
import torch
import yaml

from config.robot import RobotConfigError, load_robot_cfg
from config.validate import ConfigError
from policies.runner import Runner, default_train_cfg
from policies.storage import RolloutStorage
from sim.robots import ROBOTS_DIR
from sim.symmetry import mirrored
from sim.tasks import default_cfg, make_env
from sim.tasks.quadruped_walk import NoiseCfg


@pytest.mark.parametrize("robot", ["go1", "go2"])
def test_each_mirror_is_its_own_inverse(robot):
    env = make_env("quadruped-walk", 2, default_cfg("quadruped-walk", robot))
    for name, (index, sign) in env.mirror().items():
        assert torch.equal(index[index], torch.arange(len(index))), name
        assert torch.equal(sign * sign[index], torch.ones(len(index))), name
    env.close()


def test_the_mirrored_robot_sees_the_mirrored_observations():
    """Two Go2s from the same symmetric stance: one given commands and actions, the other their mirror
    images. Whatever the physics does, the second's observations (policy and critic) are the mirror
    images of the first's: each rule of sim/symmetry.py holds against MuJoCo, not against itself. (The
    Go2's model is mirror-symmetric; the Go1's trunk carries its centre of mass 4.4 mm to the left, as
    the real one does.) Roundoff grows to ~3e-3 rad/s in joint velocities by step 30; a wrong sign or
    pair is off by the value itself."""
    cfg = dataclasses.replace(
        default_cfg("quadruped-walk", "go2"),
        events={},  # nominal parameters (the model itself is symmetric)
        noise=NoiseCfg(ang_vel_radps=0.0, gravity=0.0, joint_pos_rad=0.0, joint_vel_radps=0.0),
    )
    env = make_env("quadruped-walk", 2, cfg)
    env.reset()
    mirror = env.mirror()
    stance = env._start_pose(torch.zeros(2, 1)).double()
    env.backend.reset(env.env_ids, stance, torch.zeros(2, env.backend.model.nv, dtype=torch.float64))
    env._read_state()
    command = env.commands["base_velocity"]
    command.value[:] = torch.tensor([[0.6, 0.3, 0.5], [0.6, -0.3, -0.5]])
    command.target[:] = command.value
    gen = torch.Generator().manual_seed(0)
    moved = 0.0
    for _ in range(30):
        action = torch.rand(1, env.spec.action_dim, generator=gen) * 2 - 1
        obs, *_ = env.step(torch.cat((action, mirrored(action, mirror["action"]))))
        for group in ("policy", "critic"):
            torch.testing.assert_close(obs[group][1:], mirrored(obs[group][:1], mirror[group]), atol=1e-2, rtol=1e-2)
        moved = max(moved, obs["critic"][0].abs().max().item())
    assert moved > 0.5  # the robots moved: the check compared real motion
    env.close()


def test_the_update_learns_from_each_sample_and_its_mirror_image():
    env = make_env("quadruped-walk", 4, default_cfg("quadruped-walk"))
    mirror = env.mirror()
    dims = env.obs_dims
    storage = RolloutStorage(3, 4, dims, env.spec.action_dim, "cpu")
    gen = torch.Generator().manual_seed(0)
    obs = env.reset()
    for _ in range(3):
        a = torch.randn(4, env.spec.action_dim, generator=gen)
        storage.add(obs, a, a + 1, a.abs() + 0.1, a.sum(-1), a[:, 0], a[:, 1], torch.zeros(4))
        obs, *_ = env.step(a)
    storage.compute_returns(torch.zeros(4), 0.99, 0.95)
    plain = next(storage.minibatches(1, 1, torch.Generator().manual_seed(1)))
    both = next(storage.minibatches(1, 1, torch.Generator().manual_seed(1), mirror))
    assert len(both["actions"]) == 2 * len(plain["actions"]) == 24
    assert int(both["mirrored"].sum()) == 12 and "mirrored" not in plain  # the KL is taken on the collected ones
    # every sample is there with its mirror image, whose advantage, return and log-probability are its own
    key = {tuple(row.tolist()): i for i, row in enumerate(both["obs/policy"])}
    for i, row in enumerate(plain["obs/policy"]):
        j = key[tuple(mirrored(row[None], mirror["policy"])[0].tolist())]
        torch.testing.assert_close(both["obs/critic"][j], mirrored(plain["obs/critic"][i : i + 1], mirror["critic"])[0])
        torch.testing.assert_close(both["actions"][j], mirrored(plain["actions"][i : i + 1], mirror["action"])[0])
        torch.testing.assert_close(both["action_std"][j], plain["action_std"][i, mirror["action"][0]])
        for name in ("advantages", "returns", "log_prob", "values"):
            assert both[name][j] == plain[name][i], name
    env.close()


def test_symmetry_trains_and_a_robot_without_a_mirror_is_named(tmp_path):
    cfg = dataclasses.replace(default_train_cfg("quadruped-walk"), num_envs=16, max_iterations=2, save_interval=2)
    cfg = dataclasses.replace(cfg, ppo=dataclasses.replace(cfg.ppo, symmetry=True, num_steps=4))
    runner = Runner(cfg, default_cfg("quadruped-walk"), tmp_path / "walk")
    runner.learn(progress=False)
    assert (tmp_path / "walk" / "model_2.pt").exists()
    hover = dataclasses.replace(default_train_cfg("quadrotor-hover"), num_envs=8)
    hover = dataclasses.replace(hover, ppo=dataclasses.replace(hover.ppo, symmetry=True))
    with pytest.raises(ConfigError, match="robot 'crazyflie' has no `mirror` in its config"):
        Runner(hover, default_cfg("quadrotor-hover"), tmp_path / "hover")


def test_a_mirror_that_does_not_fit_the_robot_is_named(tmp_path):
    go1 = yaml.safe_load((ROBOTS_DIR / "go1.yaml").read_text())
    go1["model"] = str(ROBOTS_DIR / go1["model"])
    go1["mirror"] = {"swap": [["FR", "FL"], ["RR", "FR"]], "negate": ["FR_hip_joint", "FR_knee"]}
    path = tmp_path / "robot.yaml"
    path.write_text(yaml.safe_dump(go1))
    with pytest.raises(RobotConfigError, match=r"mirror.swap: a name may be in one pair only"):
        load_robot_cfg(path)
    go1["mirror"] = {"swap": [["FR", "FX"], ["RR", "RL"]], "negate": ["FR_hip_joint", "FR_knee", "RR_hip_joint"]}
    path.write_text(yaml.safe_dump(go1))
    with pytest.raises(RobotConfigError) as e:
        load_robot_cfg(path)
    text = str(e.value)
    for expected in (
        "mirror.swap: the mirror image of each of joints.names must be one of them, not: FR_hip_joint -> FX_hip_joint",
        "mirror.swap: the mirror image of each of feet.names must be one of them, not: FR -> FX",
        "mirror.negate: not joints of this robot: ['FR_knee']",
        "mirror.negate: a joint and its mirror image change sign together: FR_hip_joint / FX_hip_joint, "
        "FR_knee / FX_knee, RR_hip_joint / RL_hip_joint",
    ):
        assert expected in text, text
