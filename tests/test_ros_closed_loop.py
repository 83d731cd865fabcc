"""Sim-in-the-loop through ROS 2: sim_robot_node and policy_node as separate processes, started with
the arguments deploy.launch.py gives them, talking over Fast DDS, two robots at a time. Each shipped
policy does its task through the whole robot-side stack and scores as `s2r eval` does on the same policy,
within the spread of the few episodes the test can afford, with the CPU saturated: two CPU-bound processes per core at
normal priority run beside the nodes (issue 14), as perception and logging do on a robot's computer. The
nodes hold real time by running real-time (SCHED_FIFO); where the system does not permit it, the test runs
on a quiet machine and says so."""

from __future__ import annotations

import json
import os
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest

pytest.importorskip("rclpy")

from s2r_ros.processes import SHIPPED_POLICIES, policy_params, start_node, stop, wait_for  # noqa: E402

from deploy.bench import cpu_burners  # noqa: E402
from deploy.realtime import realtime_permitted  # noqa: E402
from sim.evaluate import evaluate, load_policy  # noqa: E402
from sim.sim_robot import noise_free  # noqa: E402

# robot: (episodes through ROS, the task's success metric compared with s2r eval, allowed difference)
CASES = {
    "quadrotor": (12, "success_rate", 0.1),  # rates: 10 percentage points (+ one episode of granularity)
    "arm": (10, "success_rate", 0.1),
    # errors: 3 σ of a 3-episode mean, whose spread over commands is 10 % (quadruped) and 12 % (go2) of
    # s2r eval's 100-episode figure (s2r eval itself, 40 seeds of 3 episodes, noise-free, 2026-12-06)
    "quadruped": (3, "mean_lin_vel_error_mps", 0.35),
    "f450": (12, "success_rate", 0.1),
    "open_manipulator_x": (10, "success_rate", 0.1),
    "go2": (3, "mean_lin_vel_error_mps", 0.35),
}


# Robots run in waves, each pair of nodes on its own ROS domain, sharing the cores with the burners and the
# references. Three pairs at a time starved a pair now and then on 2 cores (a stale-sensor fault early on leaves
# its robot passive for the remaining episodes: 3 of 4 runs of the file on 2026-12-07 lost one or two robots);
# two pairs, a walking robot's heavy sim with a light one, do not.
WAVES = (("quadrotor", "quadruped"), ("arm", "go2"), ("f450", "open_manipulator_x"))
assert sorted(r for w in WAVES for r in w) == sorted(CASES)


@dataclass
class ClosedLoop:
    """One robot's run through ROS: the sim robot's summary (None if it did not finish), the reference."""

    through_ros: dict | None
    reference: dict
    load: str
    logs: str


def run_wave(robots: tuple[str, ...], tmp_path_factory) -> dict[str, ClosedLoop]:
    for robot in robots:
        if not (SHIPPED_POLICIES / f"{robot}.onnx").exists():
            pytest.fail(f"no shipped policy for {robot}: train it with the README's command and copy policy.onnx")
    why_not_realtime = realtime_permitted()
    burners = 0 if why_not_realtime else 2 * (os.cpu_count() or 1)
    load = f"{burners} CPU burners" if burners else f"quiet: no real-time scheduling here ({why_not_realtime})"
    domains = random.sample(range(1, 200), len(robots))
    dirs = {r: tmp_path_factory.mktemp(r) for r in robots}
    summaries = {r: dirs[r] / "summary.json" for r in robots}
    nodes: dict[str, tuple] = {}

    def logs(robot: str) -> str:
        return "\n".join((dirs[robot] / f"{n}.log").read_text() for n in ("sim_robot_node", "policy_node"))

    def exited(robot: str) -> bool:
        return any(p.poll() is not None for p in nodes[robot])

    try:
        for robot, domain in zip(robots, domains, strict=True):
            episodes = CASES[robot][0]
            params = {"episodes": episodes, "summary_path": str(summaries[robot])}
            sim = start_node("sim_robot_node", robot, dirs[robot], domain, params)
            policy = policy_params(robot, SHIPPED_POLICIES / f"{robot}.onnx")
            nodes[robot] = (sim, start_node("policy_node", robot, dirs[robot], domain, policy))
        # the load begins once every node is built and scheduled: start-up runs at ordinary priority
        built = lambda r: logs(r).count("real-time scheduling:") == 2 or exited(r)  # noqa: E731
        wait_for(lambda: all(built(r) for r in robots), 120, what="every node built")
        if burners:
            for robot in robots:
                assert logs(robot).count("real-time scheduling: SCHED_FIFO") == 2, logs(robot)
        task_cfgs = {r: load_policy(SHIPPED_POLICIES / f"{r}.onnx")[1] for r in robots}
        with cpu_burners(burners), ThreadPoolExecutor(len(robots)) as pool:
            # the references, meanwhile (more load): s2r eval of each policy, the sim robot's noise-free sensors
            references = {
                r: pool.submit(
                    evaluate, SHIPPED_POLICIES / f"{r}.onnx", episodes=100, task_cfg=noise_free(task_cfgs[r])
                )
                for r in robots
            }
            timeout_s = max((CASES[r][0] + 2) * task_cfgs[r].episode_s * 2 + 60 for r in robots)
            done = lambda r: summaries[r].exists() or exited(r)  # noqa: E731
            try:
                wait_for(lambda: all(done(r) for r in robots), timeout_s, what="every robot's episodes")
            except TimeoutError:
                pass  # each robot's test names what it lacks
            results = {r: references[r].result() for r in robots}
    finally:
        stop(*(p for pair in nodes.values() for p in pair))
    return {
        r: ClosedLoop(
            json.loads(summaries[r].read_text()) if summaries[r].exists() else None, results[r], load, logs(r)
        )
        for r in robots
    }


@pytest.fixture(scope="module")
def closed_loop(tmp_path_factory):
    """`closed_loop(robot)`: that robot's run, from its wave (run once, when the first of its robots asks)."""
    runs: dict[str, ClosedLoop] = {}

    def get(robot: str) -> ClosedLoop:
        if robot not in runs:
            runs.update(run_wave(next(w for w in WAVES if robot in w), tmp_path_factory))
        return runs[robot]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("robot", list(CASES))
def test_shipped_policy_does_its_task_through_ros(robot, closed_loop):
    episodes, metric, tolerance = CASES[robot]
    run = closed_loop(robot)
    assert run.through_ros is not None, f"{robot}: no summary of {episodes} episodes\n{run.logs}"
    through_ros, reference, load = run.through_ros, run.reference, run.load
    got, want = through_ros[metric], reference[metric]
    other = {k: round(v, 4) for k, v in through_ros.items() if isinstance(v, float)}
    print(
        f"{robot} ({load}): through ROS {metric} {got:.4f} over {episodes} episodes; "
        f"s2r eval {want:.4f} over 100 (noise-free); {other}"
    )
    if metric.endswith("_rate"):
        assert abs(got - want) <= tolerance + 1 / episodes, (through_ros, reference)
    else:  # an error: the stack must not make it worse than the spread of 3 episodes' commands explains
        assert got <= (1 + tolerance) * want, (through_ros, reference)
    for rate in ("fall_rate", "crash_rate"):
        if rate in reference:
            assert through_ros[rate] <= reference[rate] + 1 / episodes, (through_ros, reference)
