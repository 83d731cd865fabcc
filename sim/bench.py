"""`s2r bench sim`: training-env throughput against the raw physics step ceiling, measured in one run.

Ceiling, cpu backend: the worlds the env steps (the task's model with its edits, e.g. joint drives, and
each env's model variant) stepped by `mujoco.rollout` in one call of `steps` steps per env from the env's
state and inputs, same envs and threads, no task code and no state recorded. Also timed, for the record:
the alternative to `rollout`, a Python thread pool calling `mj_step` per env.
Ceiling, warp backend: MuJoCo Warp's own `mjw.step`, `steps` times on the env's worlds (its model with the
per-world fields, its data; one CUDA graph on a GPU), the env's state put back after each timing.
Env: `env.step` with hover actions (zeros), which includes the actuator
model, latency, observations for both groups, rewards, terminations and resets.
"""

from __future__ import annotations

import functools
import time
from concurrent.futures import ThreadPoolExecutor

import mujoco
import numpy as np
import torch
from mujoco import rollout

from sim.backends.mujoco_cpu import CONTROL_SPEC, MujocoCpuBackend
from sim.env import one_torch_thread
from sim.tasks import default_cfg, make_env


def _rate(fn, count: int) -> float:
    t0 = time.perf_counter()
    fn()
    return count / (time.perf_counter() - t0)


def make_ceiling(models: list[mujoco.MjModel], init_state: np.ndarray, ctrl: np.ndarray, nthread: int, steps: int):
    """Raw physics, as a callable: one `rollout` call of `steps` steps for each env, of `models[i]` (the
    env's own model variant: randomized friction loss, say, adds solver work) from `init_state[i]` with
    `ctrl[i]` (controls and applied forces, the backend's layout) held, recording nothing: the fastest
    MuJoCo steps these worlds."""
    datas = [mujoco.MjData(models[0]) for _ in range(nthread)]
    control = np.ascontiguousarray(np.repeat(ctrl[:, None], steps, axis=1))
    pool = rollout.Rollout(nthread=nthread)

    def run():
        pool.rollout(models, datas, init_state, control, control_spec=CONTROL_SPEC, nstep=steps, skip_checks=True)

    return run, pool


def thread_pool_rate(model: mujoco.MjModel, ctrl: np.ndarray, nthread: int, steps: int) -> float:
    """Physics steps/s with a Python thread pool, each worker calling `mj_step` on its share of envs."""
    n = len(ctrl)
    datas = [mujoco.MjData(model) for _ in range(n)]
    for d, c in zip(datas, ctrl, strict=True):
        d.ctrl[:] = c
    chunks = np.array_split(np.arange(n), nthread)

    def work(ids):
        for _ in range(steps):
            for i in ids:
                mujoco.mj_step(model, datas[i])

    with ThreadPoolExecutor(nthread) as ex:
        return _rate(lambda: list(ex.map(work, chunks)), n * steps)


def make_warp_ceiling(backend, steps: int):
    """Raw MuJoCo Warp, as a callable: `steps` `mjw.step` calls on the backend's own worlds (one CUDA graph
    on a GPU), waiting for the device: the fastest MuJoCo Warp steps these worlds."""
    import mujoco_warp as mjw
    import warp as wp

    def physics():
        for _ in range(steps):
            mjw.step(backend.mjw_model, backend.mjw_data)

    launch = physics
    if backend.device != "cpu":
        with wp.ScopedDevice(backend.device), wp.ScopedCapture() as capture:
            physics()
        assert capture.graph is not None
        launch = functools.partial(wp.capture_launch, capture.graph)

    def run():
        with wp.ScopedDevice(backend.device):
            launch()
            wp.synchronize_device()

    return run


def bench_sim(
    task: str,
    num_envs: int,
    steps: int = 100,
    repeats: int = 7,
    seed: int = 0,
    robot: str | None = None,
    backend: str = "cpu",
) -> dict:
    """Env and ceiling are timed alternately, `steps` physics steps per env each time, `repeats` pairs.
    The ratio is the median over pairs of env rate / ceiling rate: on a shared machine whose speed
    drifts by tens of percent between seconds, adjacent timings see the same machine. The env steps
    with one torch thread, as training collects. `backend`: sim.backends' name (cpu, warp, auto)."""
    with one_torch_thread():
        return _bench_sim(task, num_envs, steps, repeats, seed, robot, backend)


def _bench_sim(
    task: str, num_envs: int, steps: int, repeats: int, seed: int, robot: str | None, backend_name: str
) -> dict:
    env = make_env(task, num_envs, default_cfg(task, robot), seed=seed, backend=backend_name)
    env.reset()
    backend = env.backend
    action = torch.zeros(num_envs, env.spec.action_dim, device=env.device)
    for _ in range(10):
        env.step(action)
    if isinstance(backend, MujocoCpuBackend):
        ctrl = backend._control[:, 0].copy()  # ctrl and applied forces, as the env last set them
        ceiling, pool = make_ceiling(list(backend._models), backend._state.copy(), ctrl, backend.nthread, steps)
        where = {"backend": "cpu", "threads": backend.nthread}
    else:
        ceiling = make_warp_ceiling(backend, steps)
        where = {"backend": "warp", "device": backend.device}
    env_steps = max(1, steps // env.decimation)

    def run_env():
        for _ in range(env_steps):
            env.step(action)

    env_rates, ceiling_rates = [], []
    for _ in range(repeats):
        env_rates.append(_rate(run_env, num_envs * env_steps * env.decimation))
        state = backend.state_dict()  # the warp ceiling steps the env's own worlds: the env goes on from here
        ceiling_rates.append(_rate(ceiling, num_envs * steps))
        backend.load_state_dict(state)
    if isinstance(backend, MujocoCpuBackend):
        pool.close()
        pool_envs = min(num_envs, 1024)
        where["python_thread_pool_mj_step_per_s"] = thread_pool_rate(
            backend.model, ctrl[:pool_envs, : backend.model.nu], backend.nthread, max(1, steps // 10)
        )
    env.close()
    env_rate = float(np.median(env_rates))
    ratios = np.array(env_rates) / np.array(ceiling_rates)
    return {
        "task": task,
        "robot": env.spec.robot,
        "num_envs": num_envs,
        **where,
        "physics_steps_per_env_step": env.decimation,
        "env_physics_steps_per_s": env_rate,
        "env_steps_per_s": env_rate / env.decimation,
        "mj_step_ceiling_per_s": float(np.median(ceiling_rates)),
        "ratio": float(np.median(ratios)),
        "ratio_range": (float(ratios.min()), float(ratios.max())),
    }
