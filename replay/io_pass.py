"""The first replay pass: `policy_io` only (obs, raw action, command, timing of every running control
step), streamed in blocks of CHUNK_ROWS rows of one layout (one ONNX call and array operations per
block), so memory stays flat however long the log:

- action agreement: each candidate's actions recomputed from the logged observations against the
  logged actions, |difference| per action name (max, mean);
- distribution shift: the logged observations under each candidate's normalizer, per term (replay.shift);
- task metrics from the logged observations (replay.task_metrics), and for a task that tracks a
  commanded base velocity, `base_tracking_pass` over /cmd_vel and /odom while the controller ran.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from deploy.spec import PolicySpec
from replay.bag import BagReader, StreamHealthCounter, find_topic, policy_io_segments
from replay.candidates import Candidate, ReplayError
from replay.report import PLOT_ROWS
from replay.shift import ColumnStats, shift_summary
from replay.task_metrics import TaskMetrics

POLICY_IO = "/policy_io"
POLICY_IO_FIELDS = ("obs", "action", "command", "timing")
CHUNK_ROWS = 2048  # policy_io rows per batch


def _check_fields(segments: dict[str, slice], width: int, spec: PolicySpec, where: str) -> None:
    missing = [f for f in POLICY_IO_FIELDS if f not in segments]
    if missing:
        raise ReplayError(f"{where}: policy_io has no field(s) {missing} (it has {sorted(segments)})")
    size = {f: segments[f].stop - segments[f].start for f in POLICY_IO_FIELDS}
    if size["obs"] != spec.obs_dim or size["action"] != spec.action_dim:
        raise ReplayError(
            f"{where}: policy_io obs/action sizes {size['obs']}/{size['action']} differ from "
            f"the PolicySpec's {spec.obs_dim}/{spec.action_dim}"
        )
    if size["timing"] < 1 or max(segments[f].stop for f in POLICY_IO_FIELDS) > width:
        raise ReplayError(f"{where}: policy_io layout {segments} does not fit its {width} values (or has no step time)")


def policy_io_pass(
    reader: BagReader, spec: PolicySpec, candidates: list[Candidate], cfg, task: TaskMetrics | None = None
) -> dict:
    """Action agreement, shift and task metrics in one stream over policy_io, computed on blocks of
    CHUNK_ROWS messages that share a layout (one ONNX call and array operations per block). `task`:
    the task metrics to feed (default: new ones of `cfg`)."""
    if find_topic(reader, POLICY_IO) is None:
        raise ReplayError(reader.missing_topic(POLICY_IO))
    period_s = 1.0 / spec.control_hz
    agree = [ColumnStats(spec.action_dim) for _ in candidates]
    z_abs = [ColumnStats(spec.obs_dim) for _ in candidates]
    beyond = [np.zeros(spec.obs_dim) for _ in candidates]
    task = TaskMetrics(spec, cfg) if task is None else task
    health = StreamHealthCounter(period_s)
    step_clock = StreamHealthCounter(period_s)  # the controller's own step times (timing[0])
    plot = {"action": [], **{c.name: [] for c in candidates}}
    rows: list[np.ndarray] = []  # each message's data, all of one layout
    times: list[int] = []
    layout, width, seg = None, -1, {}

    def flush() -> None:
        if not rows:
            return
        block = np.asarray(rows, dtype=np.float64)
        health.add(np.asarray(times, dtype=np.int64))
        step_clock.add((block[:, seg["timing"].start] * 1e9).astype(np.int64))
        obs, action = block[:, seg["obs"]], block[:, seg["action"]]
        task.add(obs)
        keep = max(0, PLOT_ROWS - len(plot["action"]))
        plot["action"] += list(action[:keep])
        for i, c in enumerate(candidates):
            pred = c.policy(obs).astype(np.float64)
            agree[i].add(np.abs(pred - action))
            z = np.abs((obs - c.obs_mean) / c.obs_std)
            z_abs[i].add(z)
            beyond[i] += (z > 3).sum(0)
            plot[c.name] += list(pred[:keep])
        rows.clear()
        times.clear()

    for m in reader.messages([POLICY_IO]):
        data = m.msg.data
        if len(data) != width or (m.msg.layout is not layout and m.msg.layout != layout):
            flush()
            layout, width, seg = m.msg.layout, len(data), policy_io_segments(m.msg.layout)
            _check_fields(seg, width, spec, str(reader.path))
        rows.append(data)
        times.append(m.log_time_ns)
        if len(rows) >= CHUNK_ROWS:
            flush()
    flush()
    if health.n == 0:
        raise ReplayError(f"bag {reader.path}: topic {POLICY_IO} has no messages")
    names = spec.action.names
    return {
        "rows": health.n,
        "logged_s": health.result().span_s,
        "health": {
            "policy_io_receive": dataclasses.asdict(health.result()),
            "controller_steps": dataclasses.asdict(step_clock.result()),
        },
        "action_agreement": {
            c.name: {
                "max_abs_diff": float(a.max_abs.max()),
                "mean_abs_diff": float(a.mean().mean()),
                "per_action": {
                    n: {"max_abs_diff": float(mx), "mean_abs_diff": float(mn)}
                    for n, mx, mn in zip(names, a.max_abs, a.mean(), strict=True)
                },
            }
            for c, a in zip(candidates, agree, strict=True)
        },
        "shift": {c.name: shift_summary(spec, z, b) for c, z, b in zip(candidates, z_abs, beyond, strict=True)},
        "task_metrics": task.summary(period_s),
        "_plot": {k: np.asarray(v) for k, v in plot.items()},
        "_span_ns": (health.first, health.prev),
    }


def base_tracking_pass(reader: BagReader, task: TaskMetrics, span_ns: tuple[int, int]) -> bool:
    """A commanded base velocity's tracking from the log: |cmd_vel (x, y) - odometry twist (x, y)|
    (both body frame) on every /odom message while the controller ran (`span_ns`), from the task's
    `base_velocity_settle_s` after each command change, as `s2r eval` measures it, fed to `task`.
    False when the bag lacks /odom or /cmd_vel."""
    odom_topic, cmd_topic = (find_topic(reader, name) for name in ("odom", "cmd_vel"))
    if odom_topic is None or cmd_topic is None:
        return False
    topics = [odom_topic, cmd_topic]
    settle_s = task.base_velocity_settle_s
    if settle_s is None:
        raise ValueError(f"task {task.spec.task} does not track a commanded base velocity")
    settle_ns = round(settle_s * 1e9)
    errors, cmd, changed_ns = [], None, 0
    for m in reader.messages(topics):
        if m.topic == cmd_topic:
            new = (m.msg.linear.x, m.msg.linear.y)
            if new != cmd:
                cmd, changed_ns = new, m.log_time_ns
            continue
        if cmd is None or not span_ns[0] <= m.log_time_ns <= span_ns[1] or m.log_time_ns - changed_ns < settle_ns:
            continue
        v = m.msg.twist.twist.linear
        errors.append(math.hypot(cmd[0] - v.x, cmd[1] - v.y))
        if len(errors) >= CHUNK_ROWS:
            task.add_base_velocity_error(np.asarray(errors))
            errors.clear()
    if errors:
        task.add_base_velocity_error(np.asarray(errors))
    return True
