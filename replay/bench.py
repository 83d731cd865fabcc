"""`s2r bench replay`: replay throughput in multiples of real time, and the dynamics-gap pass's cost.

The bags are recorded here from the task env driven by the policy (no ROS needed): policy_io, the
joint commands and the joint states, each just after the odometry of the same stamp for a floating
base (four per control step, as a 200 Hz driver publishes them, so the reader decompresses a
realistic mix of topics), written with replay.bag.BagWriter.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from deploy.onnx_policy import OnnxPolicy
from replay.bag import BagWriter
from replay.candidates import load_candidate
from replay.gap_pass import dynamics_pass, nominal_cfg
from replay.io_pass import policy_io_pass

SHIPPED = Path(__file__).resolve().parents[1] / "ros_ws" / "src" / "s2r_ros" / "policies"
ARRAY, JS, ODOM, TWIST = (
    "std_msgs/msg/Float64MultiArray",
    "sensor_msgs/msg/JointState",
    "nav_msgs/msg/Odometry",
    "geometry_msgs/msg/Twist",
)
SENSOR_MESSAGES_PER_STEP = 4


def _array(segments: list[tuple[str, np.ndarray]]) -> dict:
    dims, offset = [], 0
    for label, x in segments:
        dims.append({"label": label, "size": int(x.size), "stride": offset})
        offset += x.size
    return {
        "layout": {"dim": dims, "data_offset": 0},
        "data": np.concatenate([x.ravel() for _, x in segments]).tolist(),
    }


def _xyz(v: np.ndarray | tuple[float, float, float]) -> dict:
    return dict(zip("xyz", map(float, v), strict=True))


def _odometry(header: dict, r: dict[str, np.ndarray]) -> dict:
    """nav_msgs/Odometry of SimRobot readings as the sim robot node publishes it (REP 105): pose in
    the world, twist in the body frame."""
    return {
        "header": {**header, "frame_id": "world"},
        "child_frame_id": "base",
        "pose": {
            "pose": {
                "position": _xyz(r["base_pos_w"]),
                "orientation": dict(zip("wxyz", map(float, r["base_quat_wxyz"]), strict=True)),
            }
        },
        "twist": {"twist": {"linear": _xyz(r["base_lin_vel_b"]), "angular": _xyz(r["base_ang_vel_b"])}},
    }


def record_rollout_bag(policy_path: Path, bag: Path, seconds: float, cfg=None, seed: int = 0) -> dict:
    """A joint robot's rollout as a robot-side recorder would log it: each control step's policy_io and
    joint_commands (position, kp_scale 1, kd NaN), and the joint states from the start of the step,
    for a floating base each just after the odometry of the same header stamp, and the operator's
    velocity command (cmd_vel). Returns the env's own mean linear-velocity tracking error over the
    settled steps (`s2r eval`'s measure), to check the figure replay computes from the log."""
    from sim.evaluate import load_policy
    from sim.sim_robot import SimRobot

    policy, task_cfg = load_policy(policy_path)
    spec = policy.spec
    robot = SimRobot(spec.task, cfg if cfg is not None else task_cfg, seed=seed)
    env = robot.env
    obs = env.reset()["policy"].numpy()
    n = spec.action_dim
    period_ns = round(1e9 / spec.control_hz)
    t = 1_700_000_000_000_000_000
    meta = {"policy_spec": spec.to_json(), "policy_sha256": policy.sha256}
    settled_errors = []
    with BagWriter(bag, meta, flush_period_s=1e9) as writer:
        for _ in range(round(seconds * spec.control_hz)):
            r = robot.readings()
            header = {"stamp": {"sec": t // 10**9, "nanosec": t % 10**9}}
            command = robot.operator().get("command")
            if command is not None:
                writer.write_msg(
                    "/cmd_vel",
                    TWIST,
                    {"linear": _xyz((command[0], command[1], 0.0)), "angular": _xyz((0.0, 0.0, command[2]))},
                    t - 200,
                )
            odom = _odometry(header, r) if robot.has_base else None
            joint_state = {
                "header": header,
                "name": list(spec.action.names),
                "position": r["joint_pos"].tolist(),
                "velocity": r["joint_vel"].tolist(),
                "effort": [],
            }
            for j in range(SENSOR_MESSAGES_PER_STEP):  # the same reading, as a 200 Hz driver repeats it
                log_t = t + j * period_ns // SENSOR_MESSAGES_PER_STEP
                if odom is not None:
                    writer.write_msg("/odom", ODOM, odom, log_t - 100)
                writer.write_msg("/joint_states", JS, joint_state, log_t)
            action = policy(obs)
            command = env.action_mapper(torch.from_numpy(action)).numpy()[0]
            writer.write_msg(
                "/joint_commands",
                ARRAY,
                _array([("command", np.concatenate((command, np.ones(n), np.full(n, np.nan))))]),
                t - 1000,
            )
            writer.write_msg(
                "/policy_io",
                ARRAY,
                _array(
                    [
                        ("obs", obs[0]),
                        ("action", action[0]),
                        ("command", command),
                        ("timing", np.array([t / 1e9, 0.0, 0.0, 2.0])),
                    ]
                ),
                t + 1000,
            )
            o, _, _, _, extras = env.step(torch.from_numpy(action))
            metrics = extras["metrics"]
            if "lin_vel_error_mps" in metrics and metrics["settled"][0] > 0:
                settled_errors.append(float(metrics["lin_vel_error_mps"][0]))
            obs = o["policy"].numpy()
            t += period_ns
    robot.close()
    return {"mean_lin_vel_error_mps": float(np.mean(settled_errors)) if settled_errors else float("nan")}


def bench_replay(
    policy: Path | None = None, seconds: float = 300.0, gap_seconds: float = 20.0, repeats: int = 3
) -> dict:
    """Throughput of the policy_io pass (one policy, what `s2r replay --no-dynamics-gap` streams) on a
    50 Hz quadruped bag of `seconds`, the median of `repeats` passes (the machine is shared); the
    dynamics-gap pass's cost per logged second (joints and floating base, k = 1, 10, 50) on a bag of
    `gap_seconds` of the same policy recorded with nominal parameters, whose k = 1 errors say the
    replay reproduces the recording simulator."""
    from replay.bag import BagReader
    from sim.evaluate import load_policy

    policy = policy or SHIPPED / "quadruped.onnx"
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        bag = Path(tmp) / "quadruped"
        record_rollout_bag(policy, bag, seconds)
        spec = OnnxPolicy(policy).spec
        cand = load_candidate(policy, spec)
        cfg = load_policy(policy)[1]
        walls = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            io = policy_io_pass(BagReader(bag), spec, [cand], cfg)
            walls.append(time.perf_counter() - t0)
        wall_s = float(np.median(walls))
        gap_bag = Path(tmp) / "quadruped_nominal"
        record_rollout_bag(policy, gap_bag, gap_seconds, nominal_cfg(cfg))
        gap = dynamics_pass(BagReader(gap_bag), spec, cfg, (1, 10, 50))
    return {
        "task": spec.task,
        "control_hz": spec.control_hz,
        "logged_s": io["logged_s"],
        "rows": io["rows"],
        "wall_s": wall_s,
        "wall_s_passes": walls,
        "throughput_x_realtime": io["logged_s"] / wall_s,
        "max_abs_action_diff": io["action_agreement"][cand.name]["max_abs_diff"],
        "gap_task": spec.task,
        "gap_logged_s": gap_seconds,
        "gap_wall_s": gap["wall_s"],
        "gap_cost_s_per_logged_s": gap["cost_s_per_logged_s"],
        "gap_windows": gap["windows"],
        "gap_k1_joint_pos_rad": gap["k"]["1"]["joint_pos_rad"]["norm"]["mean"],
        "gap_k1_base_pos_m": gap["k"]["1"]["base_pos_m"]["norm"]["mean"],
    }
