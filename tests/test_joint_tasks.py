"""quadruped-walk and arm-reach: model checks at start, randomization, observation groups, learning,
eval and video files."""

import dataclasses

import numpy as np
import pytest
import torch

from config.validate import override
from policies.checkpoint import load_checkpoint
from policies.export import export_checkpoint
from policies.runner import Runner, default_train_cfg
from sim.evaluate import evaluate
from sim.robots import find_robot
from sim.tasks import default_cfg, make_env
from sim.video import VideoError, record_video

TASKS = ("quadruped-walk", "arm-reach")


@pytest.mark.parametrize("task", TASKS)
def test_observation_groups_match_spec_and_critic_sees_params(task):
    env = make_env(task, 8)
    obs = env.reset()
    assert obs["policy"].shape == (8, env.spec.obs_dim)
    assert obs["critic"].shape == (8, env.obs_dims["critic"])
    assert env.spec.action_dim == len(env.joint_names)
    # the randomized parameters are the critic's last columns
    n = len(env.param_names)
    assert torch.equal(obs["critic"][:, -n:], env.params)
    obs, *_ = env.step(torch.zeros(8, env.spec.action_dim))
    assert torch.isfinite(obs["critic"]).all()
    env.close()


@pytest.mark.parametrize("task", TASKS)
def test_randomization_changes_what_it_claims(task):
    env = make_env(task, 64, seed=3)
    env.reset()
    p = env.params
    names = env.param_names
    # per-env parameters differ across envs, within their ranges
    for col in ("kp_scale", "kd_scale", "motor_strength"):
        v = p[:, names.index(col)]
        assert v.std() > 0.01, col
    lo, hi = env.cfg.events["gains"].params["kp_scale"]
    assert (p[:, names.index("kp_scale")] >= lo).all() and (p[:, names.index("kp_scale")] <= hi).all()
    # the PD controller uses them
    assert torch.allclose(env.pd.kp, env.pd.kp_nominal * p[:, names.index("kp_scale"), None])
    assert torch.allclose(env.pd.strength[:, 0], p[:, names.index("motor_strength")])
    assert torch.equal(env.latency_steps, p[:, names.index("latency_steps")].long())
    # model-variant parameters are in the models each env steps
    b = env.backend
    models = [b.variants[int(v)] for v in b.env_variant]
    if task == "quadruped-walk":
        floor = b.model.geom("floor").id
        friction = torch.tensor([m.geom_friction[floor, 0] for m in models], dtype=torch.float32)
        assert torch.allclose(friction, p[:, names.index("friction")])
        trunk = env.robot.base_body
        mass = torch.tensor([m.body_mass[trunk] for m in models], dtype=torch.float32)
        assert torch.allclose(mass, float(b.model.body_mass[trunk]) + p[:, names.index("payload_kg")], atol=1e-5)
    else:
        body = env.robot.payload_body
        payload = torch.tensor([m.body_mass[body] for m in models], dtype=torch.float32)
        assert torch.allclose(payload, float(b.model.body_mass[body]) + p[:, names.index("payload_kg")], atol=1e-5)
        d = b.model.joint("elbow_joint").dofadr[0]
        damping = torch.tensor([m.dof_damping[d] for m in models], dtype=torch.float32)
        assert torch.allclose(
            damping, float(b.model.dof_damping[d]) * p[:, names.index("elbow_joint_damping_scale")], atol=1e-5
        )
    assert len(set(b.env_variant.tolist())) > 10
    env.close()


def test_quadruped_stands_on_default_pose_and_pushes_move_it():
    cfg = override(default_cfg("quadruped-walk"), "model_variants", 1)
    cfg = override(cfg, "events.push.params.interval_s", 0.5)
    env = make_env("quadruped-walk", 16, cfg)
    env.reset()
    zero = torch.zeros(16, 12)
    speeds = []
    for _ in range(40):  # 0.8 s: a push at 0.5 s
        env.step(zero)
        speeds.append(env.readings["base_lin_vel_b"][:, :2].norm(dim=-1).max().item())
    assert max(speeds[20:30]) > 0.1  # the push
    assert (env.readings["base_pos_w"][:, 2] > 0.18).all() and env.episode_step.min() == 40  # nobody fell
    env.close()


ARM_JOINTS = find_robot("ur5e").joints.names


def test_joint_order_in_spec_is_the_robot_configs(monkeypatch):
    env = make_env("arm-reach", 2)
    assert env.spec.action.names == ARM_JOINTS
    # a model whose joints are in another order would give other qpos addresses: the env maps by name
    assert list(env.robot.joint_qadr) == [env.backend.model.joint(j).qposadr[0] for j in ARM_JOINTS]
    env.close()


def _train(tmp_path, task, iterations, num_envs, spread_episodes=None, **ppo):
    cfg = dataclasses.replace(default_train_cfg(task), num_envs=num_envs, max_iterations=iterations, save_interval=1000)
    if spread_episodes is not None:
        cfg = dataclasses.replace(cfg, spread_episodes=spread_episodes)
    for k, v in ppo.items():
        cfg = override(cfg, f"ppo.{k}", v)
    runner = Runner(cfg, default_cfg(task), tmp_path / task)
    ckpt = runner.learn(progress=False)
    runner.env.close()
    return ckpt


@pytest.mark.slow
def test_arm_learns_to_reach_and_eval_and_video_write_files(tmp_path):
    untrained = _train(tmp_path / "u", "arm-reach", 1, 64)
    onnx0, _ = export_checkpoint(untrained)
    before = evaluate(onnx0, episodes=64)
    ckpt = _train(tmp_path, "arm-reach", 80, 256)  # 80 iterations of 12 steps
    onnx, _ = export_checkpoint(ckpt)
    after = evaluate(onnx, episodes=64)
    assert after["mean_final_distance_m"] < 0.6 * before["mean_final_distance_m"], (before, after)
    video = record_video(onnx, tmp_path / "arm.gif", seconds=0.4)
    assert (tmp_path / "arm.gif").stat().st_size > 1000 and video["frames"] >= 5
    with pytest.raises(VideoError, match=".mp4 or .gif"):
        record_video(onnx, tmp_path / "arm.avi", seconds=0.1)


@pytest.mark.slow
def test_quadruped_training_improves_and_eval_writes_metrics(tmp_path):
    # envs started together: then the length of the episodes that end measures standing, not spreading
    ckpt = _train(tmp_path, "quadruped-walk", 12, 256, spread_episodes=False, num_steps=24)
    rows = (tmp_path / "quadruped-walk" / "metrics.csv").read_text().splitlines()
    header = rows[0].split(",")
    # early on, learning shows as standing longer (the return is dominated by the fall penalty)
    col = header.index("episode/length_s")
    length_s = [float(r.split(",")[col]) for r in rows[1:] if r.split(",")[col]]
    assert np.mean(length_s[-3:]) > 2 * np.mean(length_s[:3]), length_s
    onnx, _ = export_checkpoint(ckpt)
    result = evaluate(onnx, episodes=16)
    for k in ("mean_lin_vel_error_mps", "fall_rate"):
        assert np.isfinite(result[k]), k
    assert load_checkpoint(ckpt)["iteration"] == 12
