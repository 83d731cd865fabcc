"""The off-policy learners (SAC, TD3): they learn hover, export through the parity gate, resume, and name bad
settings at start."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from config.validate import ConfigError, override
from deploy.onnx_policy import OnnxPolicy
from policies.checkpoint import load_checkpoint
from policies.distributed import Ranks
from policies.export import export_checkpoint, model_from_checkpoint
from policies.runner import Runner, TrainCfg
from policies.sac import OffPolicy, OffPolicyModel, ReplayBuffer, SACCfg
from sim.tasks import default_cfg, make_env

REPO = Path(__file__).resolve().parent.parent
# Small and cheap: 64 envs, updates from the first iteration on.
SMALL = {"num_steps": 2, "num_updates": 2, "batch_size": 256, "buffer_size": 20_000, "learning_starts": 256}


def off_policy_run(tmp_path, name="run", algo="sac", **kw) -> Runner:
    cfg = TrainCfg(**{"num_envs": 64, "max_iterations": 4, "save_interval": 2, "algo": algo, **kw})
    for key, value in SMALL.items():
        cfg = override(cfg, f"sac.{key}", value)
    cfg = override(cfg, "sac.critic_hidden", (64, 64))
    return Runner(cfg, default_cfg(cfg.task), tmp_path / name)


def hover_seconds(model, episodes_envs: int = 64, steps: int = 200) -> float:
    """Mean seconds the deterministic policy keeps the quadrotor up, over the first `steps` control steps
    (the same envs, the same seed, for every policy compared)."""
    env = make_env("quadrotor-hover", episodes_envs, default_cfg("quadrotor-hover"), seed=7)
    obs = env.reset()
    alive = torch.ones(episodes_envs, dtype=torch.bool)
    up = torch.zeros(episodes_envs)
    with torch.no_grad():
        for _ in range(steps):
            obs, _, terminated, _, _ = env.step(model.action_mean(obs["policy"]))
            up += alive.float()
            alive &= ~terminated
    env.close()
    return float(up.mean()) / env.spec.control_hz


@pytest.mark.slow
def test_td3_learns_to_hover_longer(tmp_path):
    """The untrained actor (hover thrust, open loop) against the actor after 1000 iterations of TD3 with its
    default settings (512 k env steps, 4000 updates; about 70 s here): the quadrotor stays up longer. Shorter
    runs do not show it: for the first ~40 s the young critics lead the actor below the hover-thrust start
    (README: Off-policy training), so the budget is counted in iterations, the same on a busy machine."""
    cfg = TrainCfg(num_envs=512, max_iterations=1000, save_interval=10_000, algo="td3")
    r = Runner(cfg, default_cfg(cfg.task), tmp_path / "learn")
    before = hover_seconds(r.model)
    r.learn(progress=False)
    r.env.close()
    after = hover_seconds(r.model)
    assert after > before + 0.4, (before, after)


def test_export_is_an_actor_only_onnx_that_passes_the_parity_gate(tmp_path):
    r = off_policy_run(tmp_path, max_iterations=2)
    ckpt = r.learn(progress=False)
    r.env.close()
    onnx_path, report = export_checkpoint(ckpt)
    assert report["parity_max_abs_diff_random"] <= 1e-5 and report["parity_max_abs_diff_rollout"] <= 1e-5
    model, spec, _ = model_from_checkpoint(load_checkpoint(ckpt))
    assert isinstance(model, OffPolicyModel)
    import onnx

    weights = {i.name for i in onnx.load(str(onnx_path)).graph.initializer}
    assert not any("critic" in w for w in weights), weights  # the actor and its normalizer only
    # The exported action is the learner's deterministic one: clip * tanh(mean), inside the action clip.
    obs = np.random.default_rng(0).standard_normal((256, spec.obs_dim)).astype(np.float32) * 10
    with torch.no_grad():
        expected = model.action_mean(torch.from_numpy(obs)).numpy()
    exported = OnnxPolicy(onnx_path)(obs)
    np.testing.assert_allclose(exported, expected, atol=1e-5)
    assert np.abs(exported).max() <= spec.action.clip


def test_resume_loads_everything_but_the_buffer_and_refills_it(tmp_path):
    first = off_policy_run(tmp_path, "first", max_iterations=4)
    first.learn(progress=False)
    first.env.close()
    ckpt = load_checkpoint(tmp_path / "first" / "model_last.pt")
    assert set(ckpt["optimizer"]) == {"actor", "critic", "alpha"}
    assert any(k.startswith("target_critics.") for k in ckpt["model"]) and "log_alpha" in ckpt["model"]

    resumed = Runner(first.cfg, first.task_cfg, tmp_path / "resumed", resume=tmp_path / "first" / "model_last.pt")
    assert resumed.iteration == 4 and resumed.env_steps == first.env_steps
    for k, v in first.model.state_dict().items():
        assert torch.equal(v, resumed.model.state_dict()[k]), k
    assert resumed.learner.buffer.size == 0  # not saved: it refills from the envs
    resumed.cfg = override(resumed.cfg, "max_iterations", 6)
    resumed.learn(progress=False)
    resumed.env.close()
    assert resumed.iteration == 6
    assert resumed.learner.buffer.size == 2 * 64 * SMALL["num_steps"]
    assert resumed.learner.updates > 0  # updates started again once the refill held a batch
    assert not torch.equal(resumed.model.log_alpha, first.model.log_alpha)


def test_off_policy_settings_are_checked_against_each_other(tmp_path):
    with pytest.raises(ConfigError, match="train.sac.tau: must be in"):
        Runner(override(TrainCfg(algo="sac"), "sac.tau", 0.0), default_cfg("quadrotor-hover"), tmp_path / "r")
    with pytest.raises(ConfigError, match=r"learning_starts \(10000\) exceeds train.sac.buffer_size \(5000\)"):
        cfg = override(override(TrainCfg(algo="td3"), "sac.buffer_size", 5000), "sac.batch_size", 100)
        Runner(override(cfg, "sac.learning_starts", 10_000), default_cfg("quadrotor-hover"), tmp_path / "r")
    assert not (tmp_path / "r").exists()


def test_a_buffer_smaller_than_the_batch_is_named_by_the_command_line(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "s2r.cli", "train", "--algo", "sac", "--sac.buffer-size", "10", "--sac.batch-size"]
        + ["100", "--run-dir", str(tmp_path / "r")],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert r.returncode == 2, r.stderr
    assert "train.sac.buffer_size (10) is smaller than train.sac.batch_size (100)" in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "r").exists()


def test_n_step_transitions_stop_at_episode_ends():
    """Three-step returns over two envs: env 0 runs on; env 1 is cut by its time limit after the first
    step (bootstrapped from its final obs) and terminates after the third (no bootstrap)."""
    cfg = SACCfg(n_step=3, gamma=0.5, buffer_size=16, batch_size=1, critic_hidden=(8,), actor_hidden=(8,))
    model = OffPolicyModel(1, 1, 1, 1.0, "td3", cfg)
    buffer = ReplayBuffer(cfg.buffer_size, {"policy": 1, "critic": 1}, 1, "cpu")
    learner = OffPolicy(model, buffer, cfg, torch.Generator(), Ranks())

    def obs(a, b):
        return {g: torch.tensor([[a], [b]], dtype=torch.float32) for g in ("policy", "critic")}

    no, yes = torch.tensor([False, False]), torch.tensor([False, True])
    steps = [  # rewards, terminated, truncated, next obs (env 1's after step 0: its final obs)
        (torch.tensor([1.0, 10.0]), no, yes, obs(1, 11)),
        (torch.tensor([2.0, 20.0]), no, no, obs(2, 12)),
        (torch.tensor([4.0, 40.0]), yes, no, obs(3, 13)),
        (torch.tensor([8.0, 80.0]), no, no, obs(4, 14)),
    ]
    for t, (rewards, terminated, truncated, next_obs) in enumerate(steps):
        learner.record((obs(t, 100 + t), torch.zeros(2, 1)), rewards, terminated, truncated, next_obs)
    assert buffer.size == 4  # two transitions per env: those starting at steps 0 and 1
    torch.testing.assert_close(buffer.rewards[:4], torch.tensor([1 + 1 + 1, 10.0, 2 + 2 + 2, 20 + 20]))
    torch.testing.assert_close(buffer.discounts[:4], torch.tensor([0.125, 0.5, 0.125, 0.0]))
    torch.testing.assert_close(buffer.next_obs["critic"][:4, 0], torch.tensor([3.0, 11, 4, 13]))
    torch.testing.assert_close(buffer.obs["policy"][:4, 0], torch.tensor([0.0, 100, 1, 101]))


def test_the_env_hands_over_where_the_time_limit_cut_an_episode():
    """With keep_final_obs, a step that ends episodes at their time limit also returns their last observations
    (what the learner bootstraps from), not only the next episodes' first."""
    env = make_env("quadrotor-hover", 8, override(default_cfg("quadrotor-hover"), "episode_s", 0.05), seed=3)
    env.keep_final_obs = True
    obs = env.reset()
    hover = torch.zeros(8, env.spec.action_dim)
    for _ in range(4):
        previous = obs
        obs, _, _, truncated, extras = env.step(hover)
        assert not truncated.any() and "final_obs" not in extras
    obs, _, terminated, truncated, extras = env.step(hover)  # the fifth control step: the time limit
    assert truncated.all() and not terminated.any()
    final, first = extras["final_obs"], obs
    # the cut episodes moved a little in one step (0.01 s); the new ones start elsewhere
    assert (final["critic"][:, :3] - previous["critic"][:, :3]).abs().max() < 0.05
    assert (first["critic"][:, :3] - previous["critic"][:, :3]).abs().max() > 0.05
    env.close()
