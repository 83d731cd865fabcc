"""Sim-in-the-loop through ROS 2: sim_robot_node and policy_node as separate processes, started with
the arguments deploy.launch.py gives them, talking over Fast DDS. Each shipped policy does its task
through the whole robot-side stack and scores within 10 % of `s2r eval` on the same policy."""

from __future__ import annotations

import json
import random

import pytest

pytest.importorskip("rclpy")

from s2r_ros.processes import ROBOTS, SHIPPED_POLICIES, policy_params, start_node, stop, wait_for  # noqa: E402

from sim.evaluate import evaluate  # noqa: E402

# robot: (episodes through ROS, the task metric compared with s2r eval)
CASES = {
    "quadrotor": (8, "mean_pos_error_m"),
    "arm": (10, "mean_final_distance_m"),
    "quadruped": (3, "mean_lin_vel_error_mps"),
}
ABS_TOL = {"mean_pos_error_m": 0.01, "mean_final_distance_m": 0.005, "mean_lin_vel_error_mps": 0.02}


@pytest.mark.slow
@pytest.mark.parametrize("robot", list(CASES))
def test_shipped_policy_does_its_task_through_ros(robot, tmp_path):
    episodes, metric = CASES[robot]
    policy = SHIPPED_POLICIES / f"{robot}.onnx"
    if not policy.exists():
        pytest.fail(f"no shipped policy {policy}: train it with the README's command and copy policy.onnx there")
    domain = random.randint(1, 200)
    summary_path = tmp_path / "summary.json"
    sim = start_node("sim_robot_node", robot, tmp_path, domain, {"episodes": episodes, "summary_path": str(summary_path)})
    ctl = start_node("policy_node", robot, tmp_path, domain, policy_params(robot, policy))
    try:
        task = ROBOTS[robot]
        from sim.tasks import default_cfg

        episode_s = default_cfg(task).episode_s
        wait_for(lambda: summary_path.exists() or sim.poll() is not None or ctl.poll() is not None,
                 (episodes + 2) * episode_s * 2 + 60, what=f"{episodes} episodes")
        logs = "\n".join((tmp_path / f"{n}.log").read_text() for n in ("sim_robot_node", "policy_node"))
        assert summary_path.exists(), logs
    finally:
        stop(ctl, sim)
    through_ros = json.loads(summary_path.read_text())
    reference = evaluate(policy, episodes=100)
    got, want = through_ros[metric], reference[metric]
    print(f"{robot}: through ROS {metric} {got:.4f} over {episodes} episodes; s2r eval {want:.4f} over 100")
    assert abs(got - want) <= max(0.1 * want, ABS_TOL[metric]), (through_ros, reference)
    for rate in ("fall_rate", "crash_rate"):
        if rate in reference:
            assert through_ros[rate] <= reference[rate] + 1 / episodes, (through_ros, reference)
    if "success_rate" in reference:
        assert through_ros["success_rate"] >= reference["success_rate"] - 0.1 - 1 / episodes, (through_ros, reference)
