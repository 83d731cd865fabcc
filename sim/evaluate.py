"""`s2r eval`: an exported policy, run through deploy's code, in the randomized training simulation.

The env builds observations with deploy's ObsBuilder and maps actions with deploy's ActionMapper; the
network runs on onnxruntime from the exported file. So this measures what the robot will run.
Every env runs exactly one episode from the full initial-state ranges (curriculum level 1).
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import numpy as np
import torch

from config.validate import from_dict
from deploy.onnx_policy import CHECKPOINT_KEY, ITERATION_KEY, TASK_CONFIG_KEY, OnnxPolicy
from sim.env import one_torch_thread
from sim.tasks import default_cfg, make_env, task_entry


def load_policy(policy_path: str | Path, task_cfg=None):
    """The policy, and the task config it is evaluated under: the training config stored in the ONNX
    (or the task's default), without its curricula: every range at its full width."""
    policy = OnnxPolicy(policy_path)
    task = policy.spec.task
    if task_cfg is None and TASK_CONFIG_KEY in policy.metadata:
        task_cfg = from_dict(task_entry(task).cfg, json.loads(policy.metadata[TASK_CONFIG_KEY]))
    cfg = task_cfg or default_cfg(task)
    cfg = dataclasses.replace(cfg, curricula={})
    return policy, cfg


def evaluate(policy_path: str | Path, episodes: int = 200, seed: int = 1, task_cfg=None, backend: str = "cpu") -> dict:
    """`backend`: the physics (sim.backends: cpu, warp or auto)."""
    policy, cfg = load_policy(policy_path, task_cfg)
    task = policy.spec.task
    with one_torch_thread():
        return _run_episodes(policy, task, cfg, episodes, seed, policy_path, backend)


class EpisodeRecorder:
    """Collects per-step metrics into whole episodes and summarizes them with the task's `summary`.

    Each env contributes its first `per_env` episodes; an episode that ended early is padded to the
    full length with its last values and `alive` False, so every summary sees `(steps, episodes)`.
    Used by `s2r eval` (many envs, one episode each) and the simulated robot (one env, episode after
    episode), so both score a policy the same way.
    """

    def __init__(self, summarize, num_envs: int, max_steps: int, per_env: int = 1):
        """`summarize(crashed, **series)`: the task's evaluation summary (its env's `summary`)."""
        self.summarize, self.max_steps, self.per_env = summarize, max_steps, per_env
        self._current: list[dict[str, list]] = [{} for _ in range(num_envs)]
        self._started = np.zeros(num_envs, int)  # episodes begun per env
        self.episodes: list[dict[str, np.ndarray | bool]] = []  # finished: series (steps,), alive (steps,), crashed
        self.reasons_count: dict[str, int] = {}

    @property
    def done(self) -> bool:
        return len(self.episodes) >= len(self._current) * self.per_env

    def add(self, metrics: dict, reasons: dict, terminated, truncated) -> None:
        """One step's `extras["metrics"]`, `extras["reasons"]` and flags, `(num_envs,)` each."""
        metrics = {k: np.asarray(v.cpu() if hasattr(v, "cpu") else v) for k, v in metrics.items()}
        reasons = {k: np.asarray(v.cpu() if hasattr(v, "cpu") else v) for k, v in reasons.items()}
        terminated = np.asarray(terminated.cpu() if hasattr(terminated, "cpu") else terminated)
        truncated = np.asarray(truncated.cpu() if hasattr(truncated, "cpu") else truncated)
        for i, buf in enumerate(self._current):
            if self._started[i] >= self.per_env and not buf:
                continue
            if not buf:
                self._started[i] += 1
            for k, v in metrics.items():
                buf.setdefault(k, []).append(v[i])
            if terminated[i] or truncated[i]:
                for name, mask in reasons.items():
                    self.reasons_count[name] = self.reasons_count.get(name, 0) + int(mask[i])
                self._finish(i, crashed=bool(terminated[i]))

    def _finish(self, i: int, crashed: bool) -> None:
        buf = self._current[i]
        n = len(next(iter(buf.values())))
        ep: dict[str, np.ndarray | bool] = {
            k: np.pad(np.asarray(v), (0, self.max_steps - n), mode="edge") for k, v in buf.items()
        }
        ep["alive"] = np.arange(self.max_steps) < n
        ep["crashed"] = crashed
        self.episodes.append(ep)
        self._current[i] = {}

    def summary(self) -> dict:
        eps = self.episodes
        series = {k: np.stack([e[k] for e in eps], axis=1) for k in eps[0] if k != "crashed"}
        crashed = np.array([e["crashed"] for e in eps])
        return {**self.summarize(crashed=crashed, **series), "terminations": self.reasons_count}


def _run_episodes(policy: OnnxPolicy, task: str, cfg, episodes: int, seed: int, policy_path, backend: str) -> dict:
    env = make_env(task, episodes, cfg, seed=seed, backend=backend)
    policy.spec.check_compatible(env.spec)
    env.record_metrics = True
    obs = env.reset()
    recorder = EpisodeRecorder(env.summary, episodes, env.max_episode_steps)
    t0 = time.perf_counter()
    while not recorder.done:
        action = policy(obs["policy"].cpu().numpy())
        obs, _, terminated, truncated, extras = env.step(torch.from_numpy(action).to(env.device))
        recorder.add(extras["metrics"], extras["reasons"], terminated, truncated)
    wall_s = time.perf_counter() - t0
    env.close()
    return {
        "policy": str(policy_path),
        "policy_sha256": policy.sha256,
        "checkpoint": policy.metadata.get(CHECKPOINT_KEY),
        "iteration": policy.metadata.get(ITERATION_KEY),
        "task": task,
        "episodes": episodes,
        "seed": seed,
        "randomization": "full training ranges, full initial-state ranges",
        **recorder.summary(),
        "eval_wall_s": round(wall_s, 2),
    }


def write_eval(result: dict, out_path: Path) -> None:
    out_path.write_text(json.dumps(result, indent=2))
