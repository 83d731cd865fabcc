"""Candidate policies scored on another stack's log (a CSV file or a rosbag2 bag, read through a mapping).

The log has no `policy_io`: each candidate's observations are rebuilt from the robot readings the
mapping names (READING_QUANTITIES), through the robot's own pipeline (deploy.signals + PolicyInput:
term signals, the candidate's own previous action, history), one control step at a time as the
robot would have run it. Per candidate: the distribution shift of those observations under its
normalizer, its actions on them, and the ranking that `s2r replay` of a native bag gives (simulated
evaluation combined with the shift). Task metrics come from the rebuilt observations, as for a
native bag. The log streams in chunks: memory stays flat however long it is.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import cast

import numpy as np

from deploy.obs_builder import PolicyInput
from deploy.onnx_policy import OnnxPolicy
from deploy.signals import TERMS, make_signals, required_readings
from deploy.spec import PolicySpec
from replay.candidates import Candidate, ReplayError, load_candidate
from replay.mapping import (
    JOINT_QUANTITIES,
    KNOWN_SIZES,
    READING_QUANTITIES,
    Mapping,
    MappingError,
    iter_log,
    load_mapping,
    merge_clocks,
)
from replay.ranking import SHIFT_WEIGHT, rank
from replay.report import PLOT_ROWS, write_report
from replay.shift import ColumnStats, shift_summary
from replay.task_metrics import TaskMetrics


def reading_columns(mapping: Mapping, spec: PolicySpec) -> dict[str, tuple[str, np.ndarray]]:
    """{reading: (log quantity, column order)} for every robot reading the policy needs.

    Joint quantities whose mapping entry names its joints are reordered to the policy's actuator order;
    one without names must have one field per actuator, taken in that order. MappingError names a
    missing quantity, a missing joint or a wrong count, and the observation term that needs it.
    """
    out = {}
    for reading in required_readings(spec):
        quantity = READING_QUANTITIES[reading]
        terms = [t.name for t in spec.obs if t.name in TERMS and reading in TERMS[t.name][0]]
        why = f"the policy's reading '{reading}' for observation term(s) {terms}"
        mapping.require((quantity,), why)
        if quantity not in {e.name for e in mapping.quantities}:  # derived on import
            out[reading] = (quantity, np.arange(KNOWN_SIZES[quantity]))
            continue
        entry = mapping.entry(quantity)
        order = np.arange(entry.size)
        if quantity in JOINT_QUANTITIES:
            joints = spec.action.names
            if entry.joints:
                missing = [j for j in joints if j not in entry.joints]
                if missing:
                    raise MappingError(
                        f"mapping quantity '{quantity}' has no joints {missing} (it names {list(entry.joints)})"
                    )
                order = np.array([entry.joints.index(j) for j in joints])
            elif entry.size != len(joints):
                raise MappingError(
                    f"mapping quantity '{quantity}' has {entry.size} fields; the policy has {len(joints)} "
                    f"joints {list(joints)} (name each field's joint with `joints:` to map another order)"
                )
        out[reading] = (quantity, order)
    return out


def control_stride(log_rate_hz: float, control_hz: float) -> int:
    """Log rows per control step: the log's rate must be a whole multiple of the policy's."""
    ratio = log_rate_hz / control_hz
    stride = round(ratio)
    if stride < 1 or abs(ratio - stride) > 1e-6 * ratio:
        raise ReplayError(
            f"the log's rate {log_rate_hz:g} Hz is not a whole multiple of the policy's control rate {control_hz:g} Hz"
        )
    return stride


def check_scoring(
    mapping: Mapping | str | Path, policies: list[str | Path], window_s: tuple[float, float] | None = None
) -> tuple[Mapping, PolicySpec, list[Candidate], dict[str, tuple[str, np.ndarray]], int]:
    """The mapping, the policies' spec, the candidates, their reading columns and the control stride,
    every one checked before a log is read (`s2r replay --fit` checks them before its fit)."""
    if window_s is not None and not window_s[0] < window_s[1]:
        raise ReplayError(f"window {window_s}: start must be before end")
    if not policies:
        raise ReplayError("give at least one --policy to score on the log")
    mapping = mapping if isinstance(mapping, Mapping) else load_mapping(mapping)
    spec = OnnxPolicy(policies[0]).spec
    candidates = [load_candidate(p, spec) for p in policies]
    names = [c.name for c in candidates]
    if len(set(names)) != len(names):
        raise ReplayError(f"candidate policies need distinct names (file or run folder names), got {names}")
    return mapping, spec, candidates, reading_columns(mapping, spec), control_stride(mapping.rate_hz, spec.control_hz)


def score_foreign_log(
    log_path: str | Path,
    mapping: Mapping | str | Path,
    policies: list[str | Path],
    out_dir: str | Path,
    sim_episodes: int = 100,
    window_s: tuple[float, float] | None = None,
    chunk_rows: int = 4096,
    sysid: dict | None = None,
) -> dict:
    """Shift, actions and ranking of `policies` on a foreign log; writes metrics.json and report.html.

    `window_s` (start, end), in seconds from the log's first row: only the rows in it are scored (a log
    holds more than the policy's task: the robot on the ground, take-off, landing). `sysid`: a model fit
    on the same log (replay.sysid.crazyflie_report, `--fit` beside `--policy`), reported with the policies."""
    from sim.evaluate import load_policy

    mapping, spec, candidates, columns, stride = check_scoring(mapping, policies, window_s)
    names = [c.name for c in candidates]
    cfg = load_policy(candidates[0].path)[1]
    inputs = [PolicyInput(spec, make_signals(spec)) for _ in candidates]
    z_abs = [ColumnStats(spec.obs_dim) for _ in candidates]
    beyond = [np.zeros(spec.obs_dim) for _ in candidates]
    act = [ColumnStats(spec.action_dim) for _ in candidates]
    clipped = [np.zeros(spec.action_dim) for _ in candidates]
    task = TaskMetrics(spec, cfg)
    plot: dict[str, list] = {"action": [], **{n: [] for n in names}}
    rows = steps = skipped = starts = 0
    need_reset, clock, t_first = True, None, None
    notes: list[str] = []  # where a log cut short was cut
    t0 = time.perf_counter()
    for chunk in iter_log(log_path, mapping, chunk_rows, notes):
        readings = {r: chunk[q][:, order] for r, (q, order) in columns.items()}
        finite = np.all([np.isfinite(v).all(1) for v in readings.values()], axis=0)
        t_first = chunk.t_s[0] if t_first is None else t_first
        inside = (
            np.ones(len(chunk), bool)
            if window_s is None
            else (chunk.t_s - t_first >= window_s[0]) & (chunk.t_s - t_first <= window_s[1])
        )
        obs = [[] for _ in candidates]
        actions = [[] for _ in candidates]
        for i in range(len(chunk)):
            need_reset |= not (chunk.step_ok[i] and inside[i])
            if (rows + i) % stride or not inside[i]:
                continue
            if not finite[i]:
                skipped += 1
                need_reset = True
                continue
            if need_reset:
                for inp in inputs:
                    inp.reset()
                starts += 1
                need_reset = False
            row = {r: v[i] for r, v in readings.items()}
            for j, (c, inp) in enumerate(zip(candidates, inputs, strict=True)):
                o = cast(np.ndarray, inp(row))  # PolicyInput builds numpy frames, so a numpy observation
                a = c.policy(o)
                inp.acted(a)
                obs[j].append(o[0])
                actions[j].append(a[0])
        rows += len(chunk)
        clock = chunk.clock if clock is None else merge_clocks(clock, chunk.clock)
        if not obs[0]:
            continue
        steps += len(obs[0])
        task.add(np.asarray(obs[0], dtype=np.float64))
        for j, c in enumerate(candidates):
            o, a = np.asarray(obs[j], dtype=np.float64), np.asarray(actions[j], dtype=np.float64)
            z = np.abs((o - c.obs_mean) / c.obs_std)
            z_abs[j].add(z)
            beyond[j] += (z > 3).sum(0)
            act[j].add(np.abs(a))
            clipped[j] += (np.abs(a) >= spec.action.clip).sum(0)
            plot[c.name] += list(a[: max(0, PLOT_ROWS - len(plot[c.name]))])
    if steps == 0:
        raise ReplayError(
            f"{log_path}: no control step with every reading the policy needs finite"
            + (f" in the window {window_s} s" if window_s else "")
        )
    assert clock is not None  # steps > 0: a chunk was read
    period_s = 1.0 / spec.control_hz
    metrics = {
        "log": str(log_path),
        "mapping": mapping.where or mapping.description,
        "task": spec.task,
        "robot": spec.robot,
        "control_hz": spec.control_hz,
        "rows": steps,
        "log_rows": rows,
        "logged_s": steps * period_s,
        "window_s": window_s,
        "recovery_notes": notes,
        "starts": starts,
        "skipped_nonfinite": skipped,
        "wall_s": time.perf_counter() - t0,
        "readings": {r: q for r, (q, _) in columns.items()},
        "health": {"clock": clock.to_dict()},
        "candidates": {c.name: {"path": str(c.path), "sha256": c.policy.sha256} for c in candidates},
        "actions": {
            c.name: {
                "mean_abs": dict(zip(spec.action.names, a.mean().tolist(), strict=True)),
                "frac_at_clip": dict(zip(spec.action.names, (k / steps).tolist(), strict=True)),
            }
            for c, a, k in zip(candidates, act, clipped, strict=True)
        },
        "shift": {c.name: shift_summary(spec, z, b) for c, z, b in zip(candidates, z_abs, beyond, strict=True)},
        "task_metrics": task.summary(period_s),
    }
    metrics["ranking"] = {
        "formula": f"score = sim_score - {SHIFT_WEIGHT} * max(0, shift - 1), as for a native bag; "
        f"{sim_episodes} simulated episodes per candidate; shift from observations rebuilt from the log's readings",
        "order": rank(candidates, metrics["shift"], spec.task, sim_episodes),
    }
    if sysid is not None:
        metrics["sysid"] = sysid
    write_report(metrics, {k: np.asarray(v) for k, v in plot.items()}, spec, Path(out_dir))
    return metrics


__all__ = ["score_foreign_log", "check_scoring", "reading_columns", "control_stride"]
