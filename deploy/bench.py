"""`s2r bench deploy`: what the robot-side runtime costs, on this machine, in one run.

- ONNX inference: one observation at a time on one thread, as the control loop calls it.
- Control-loop jitter: RateLoop at 50 and 500 Hz, each step a full Controller step (signals, obs
  builder, policy, safety checks) with the quadruped policy, so the step's own time is in the figure.
- DDS latency (s2r_ros.bench_latency, needs rclpy): a JointState published to a policy_node process
  paced by that stream (trigger: joint_state) until its command arrives back, over Fast DDS on loopback.
- Under load (`cpu_burners`): the same figures with CPU-bound processes at normal priority beside them,
  the rest of a robot computer's work (perception, logging) at its worst.
"""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from deploy.control_loop import Controller, RateLoop
from deploy.onnx_policy import OnnxPolicy
from deploy.robot_config import RobotConfig, load_robot_config
from deploy.signals import READINGS, make_signals


def percentiles_us(samples_ns) -> dict:
    x = np.asarray(samples_ns, dtype=np.float64) / 1e3
    return {"p50_us": float(np.percentile(x, 50)), "p99_us": float(np.percentile(x, 99)), "max_us": float(x.max())}


def bench_inference(policy_path: Path, calls: int = 5000) -> dict:
    policy = OnnxPolicy(policy_path)
    obs = np.random.default_rng(0).standard_normal((1, policy.spec.obs_dim)).astype(np.float32)
    for _ in range(200):  # warm-up
        policy(obs)
    samples = np.empty(calls, np.int64)
    for i in range(calls):
        t0 = time.perf_counter_ns()
        policy(obs)
        samples[i] = time.perf_counter_ns() - t0
    return {"policy": str(policy_path), "obs_dim": policy.spec.obs_dim, **percentiles_us(samples)}


def _readings(cfg: RobotConfig) -> dict:
    """Plausible readings of the robot at rest in its default pose."""
    n = len(cfg.actuators)
    r = {k: np.zeros(size or n) for k, (size, _) in READINGS.items()}
    r["base_quat_wxyz"] = np.array([1.0, 0.0, 0.0, 0.0])
    if cfg.default_pos_rad:
        r["joint_pos"] = np.asarray(cfg.default_pos_rad)
    return r


def bench_loop(rate_hz: float, seconds: float, policy_path: Path, robot_config: Path) -> dict:
    """RateLoop at `rate_hz` running real Controller steps (the robot config's rate is overridden)."""
    import dataclasses

    policy = OnnxPolicy(policy_path)
    cfg = dataclasses.replace(
        load_robot_config(robot_config, policy.spec), control_hz=policy.spec.control_hz, soft_start_s=0.0
    )
    ctl = Controller(cfg, policy.spec, policy, make_signals(policy.spec))
    readings = _readings(cfg)
    ctl.step(time.perf_counter_ns(), readings, {s: time.perf_counter_ns() for s in cfg.sensors})
    ctl.arm(time.perf_counter_ns())
    ctl.start()
    loop = RateLoop(rate_hz)

    def step(now_ns: int) -> None:
        ctl.step(now_ns, readings, {s: now_ns for s in cfg.sensors})

    with gc_pauses() as pauses:
        st = loop.run(step, duration_s=seconds)
    return {"rate_hz": rate_hz, "mode": ctl.mode.value, **st.to_dict(), **pauses}


@contextmanager
def gc_pauses() -> Iterator[dict]:
    """Count the garbage collector's runs inside the block and their longest pause (the loop's own
    allocations; what start-up made is frozen out of reach, deploy/realtime.freeze_gc)."""
    out = {"gc_collections": 0, "gc_max_pause_us": 0.0}
    started = [0]

    def on_gc(phase: str, info: dict) -> None:
        if phase == "start":
            started[0] = time.perf_counter_ns()
        else:
            out["gc_collections"] += 1
            out["gc_max_pause_us"] = max(out["gc_max_pause_us"], (time.perf_counter_ns() - started[0]) / 1e3)

    gc.callbacks.append(on_gc)
    try:
        yield out
    finally:
        gc.callbacks.remove(on_gc)


BURNER = "import os\nos.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))\nwhile True: pass"


@contextmanager
def cpu_burners(n: int) -> Iterator[list[subprocess.Popen]]:
    """`n` processes that each keep a core busy, at ordinary scheduling and nice 0 even when the caller runs
    real-time (each drops the policy a child inherits, needing no privilege; the block begins once all have)."""
    procs = [subprocess.Popen([sys.executable, "-c", BURNER]) for _ in range(n)]
    try:
        deadline = time.monotonic() + 30.0
        while any(os.sched_getscheduler(p.pid) != os.SCHED_OTHER for p in procs):
            if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
                raise RuntimeError("CPU burners did not start at ordinary scheduling")
            time.sleep(0.01)
        yield procs
    finally:
        for p in procs:
            p.kill()
        for p in procs:
            p.wait()
