"""`s2r bench sim`: training-env throughput against the raw `mj_step` ceiling, measured in one run.

Ceiling: the task's model stepped by `mujoco.rollout` in one call of `steps` steps per env, same envs
and threads, no task code. Env: `env.step` with hover actions (zeros), which includes the actuator
model, latency, observations for both groups, rewards, terminations and resets. Also timed, for the
record: the alternative to `rollout`, a Python thread pool calling `mj_step` per env.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import mujoco
import numpy as np
import torch
from mujoco import rollout

from sim.tasks import make_env


def _best_rate(fn, count: int, repeats: int) -> float:
    """Highest count/s over `repeats` timings: the machine is shared, the best run is the least disturbed."""
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = max(best, count / (time.perf_counter() - t0))
    return best


def mj_step_ceiling(model: mujoco.MjModel, init_state: np.ndarray, ctrl: np.ndarray, nthread: int, steps: int, repeats: int) -> float:
    """Raw physics steps/s: one `rollout` call, `steps` steps for each of len(init_state) envs."""
    n = len(init_state)
    datas = [mujoco.MjData(model) for _ in range(nthread)]
    control = np.repeat(ctrl[:, None], steps, axis=1)
    with rollout.Rollout(nthread=nthread) as pool:
        state, sensordata = pool.rollout([model] * n, datas, init_state, control, nstep=steps)
        return _best_rate(
            lambda: pool.rollout([model] * n, datas, init_state, control, nstep=steps, state=state, sensordata=sensordata),
            n * steps, repeats,
        )


def thread_pool_rate(model: mujoco.MjModel, ctrl: np.ndarray, nthread: int, steps: int) -> float:
    """Physics steps/s with a Python thread pool, each worker calling `mj_step` on its share of envs."""
    n = len(ctrl)
    datas = [mujoco.MjData(model) for _ in range(n)]
    for d, c in zip(datas, ctrl):
        d.ctrl[:] = c
    chunks = np.array_split(np.arange(n), nthread)

    def work(ids):
        for _ in range(steps):
            for i in ids:
                mujoco.mj_step(model, datas[i])

    with ThreadPoolExecutor(nthread) as ex:
        return _best_rate(lambda: list(ex.map(work, chunks)), n * steps, 1)


def bench_sim(task: str, num_envs: int, steps: int = 200, repeats: int = 3, seed: int = 0) -> dict:
    env = make_env(task, num_envs, seed=seed)
    env.reset()
    backend = env.backend
    action = torch.zeros(num_envs, env.spec.action_dim, device=env.device)
    for _ in range(10):
        env.step(action)
    ctrl = backend.ctrl.numpy().copy()
    init_state = backend._state.copy()

    def run_env():
        for _ in range(steps):
            env.step(action)

    env_rate = _best_rate(run_env, num_envs * steps, repeats) * env.decimation
    ceiling = mj_step_ceiling(backend.model, init_state, ctrl, backend.nthread, steps, repeats)
    pool_envs = min(num_envs, 1024)
    pool_rate = thread_pool_rate(backend.model, ctrl[:pool_envs], backend.nthread, max(1, steps // 10))
    env.close()
    return {
        "task": task,
        "num_envs": num_envs,
        "threads": backend.nthread,
        "physics_steps_per_env_step": env.decimation,
        "env_physics_steps_per_s": env_rate,
        "env_steps_per_s": env_rate / env.decimation,
        "mj_step_ceiling_per_s": ceiling,
        "ratio": env_rate / ceiling,
        "python_thread_pool_mj_step_per_s": pool_rate,
    }
