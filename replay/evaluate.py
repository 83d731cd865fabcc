"""`s2r replay`: evaluate candidate policies on a logged rollout (a rosbag2 MCAP bag), streaming.

Two passes over the bag, each holding one chunk of rows and fixed-size statistics, so memory stays
flat however long the log:

1. `policy_io` only (replay.io_pass: obs, raw action, command, timing of every running control step):
   - action agreement: each candidate's actions recomputed from the logged observations against the
     logged actions, |difference| per action name (max, mean);
   - distribution shift (replay.shift): the logged observations in units of each candidate's training
     distribution, z = (obs - mean) / std with the normalizer statistics stored in its ONNX file, per term;
   - task metrics from the log itself (replay.task_metrics: the task's own measures, sim.tasks
     `Task.log_metrics`), the current frame of the observation terms unscaled by the PolicySpec (so they
     need no sensor topic): hover position error and crashes, reach error, falls and yaw-rate
     tracking; thresholds from the task config `s2r eval` uses. A task that tracks a commanded base
     velocity the policy does not observe (the quadruped) gets it from /cmd_vel and /odom.
2. dynamics gap (replay.gap_pass, unless disabled): the sensor and command topics as control-rate rows,
   replayed in simulation k steps from each logged state (replay.dynamics_gap): a multirotor on the
   nominal rigid-body plant, joint robots through the task env with nominal parameters (a floating
   base, as the quadruped's, put in its logged state from the /odom nearest in header stamp to each
   /joint_states row).

The ranking (replay.ranking) combines `s2r eval`-style simulated evaluation of every candidate under
the task's full randomization with its shift on this log:  score = sim_score - SHIFT_WEIGHT * max(0, shift - 1),
where sim_score is the task's own score (success rate; quadruped: (1 - fall rate) * max(0, 1 - tracking
error / 0.5 m/s)) and shift is the mean over observation terms of the RMS z-score (1 = as in training).
metrics.json and report.html (replay.report) go into the output folder.
"""

from __future__ import annotations

import time
from pathlib import Path

from deploy.onnx_policy import OnnxPolicy
from replay.bag import BagReader
from replay.candidates import ReplayError, load_candidate, logged_spec
from replay.gap_pass import dynamics_pass
from replay.io_pass import base_tracking_pass, policy_io_pass
from replay.ranking import SHIFT_WEIGHT, rank, sim_score_definition
from replay.report import write_report
from replay.task_metrics import TaskMetrics


def replay_bag(
    bag: str | Path,
    policies: list[str | Path],
    out_dir: str | Path,
    ks: tuple[int, ...] = (1, 10, 50),
    dynamics: bool = True,
    sim_episodes: int = 100,
) -> dict:
    """Evaluate `policies` on the bag; write metrics.json, report.html and PNGs into out_dir."""
    from sim.evaluate import load_policy
    from sim.tasks import default_cfg

    reader = BagReader(bag)
    fallback = OnnxPolicy(policies[0]).spec if policies else None
    spec = logged_spec(reader, fallback)
    candidates = [load_candidate(p, spec) for p in policies]
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise ReplayError(f"candidate policies need distinct names (file or run folder names), got {names}")
    cfg = load_policy(candidates[0].path)[1] if candidates else default_cfg(spec.task)
    task = TaskMetrics(spec, cfg)
    t0 = time.perf_counter()
    io = policy_io_pass(reader, spec, candidates, cfg, task)
    io_wall_s = time.perf_counter() - t0
    plot, span_ns = io.pop("_plot"), io.pop("_span_ns")
    if task.base_velocity_settle_s is not None and base_tracking_pass(reader, task, span_ns):
        io["task_metrics"] = task.summary(1.0 / spec.control_hz)
    metrics = {
        "bag": str(bag),
        "complete": reader.complete,
        "recovery_notes": reader.notes,
        "task": spec.task,
        "robot": spec.robot,
        "logged_policy_sha256": reader.metadata.get("policy_sha256", ""),
        "control_hz": spec.control_hz,
        "candidates": {
            c.name: {
                "path": str(c.path),
                "sha256": c.policy.sha256,
                "flew": c.policy.sha256 == reader.metadata.get("policy_sha256"),
            }
            for c in candidates
        },
        **io,
        "throughput_x_realtime": io["logged_s"] / max(io_wall_s, 1e-9),
    }
    if dynamics:
        metrics["dynamics_gap"] = dynamics_pass(reader, spec, cfg, tuple(ks))
    if candidates:
        metrics["ranking"] = {
            "formula": f"score = sim_score - {SHIFT_WEIGHT} * max(0, shift - 1); sim_score: {sim_score_definition()} "
            f"over {sim_episodes} episodes of the task's default randomized config; shift: mean over "
            f"observation terms of the RMS z-score under the candidate's normalizer",
            "order": rank(candidates, metrics["shift"], spec.task, sim_episodes),
        }
    write_report(metrics, plot, spec, Path(out_dir))
    return metrics


__all__ = ["replay_bag"]
