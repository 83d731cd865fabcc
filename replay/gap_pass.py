"""The dynamics-gap pass: the sensor and command topics as control-rate rows, replayed in simulation k
steps from each logged state (replay.dynamics_gap), segment by segment so memory stays flat: a
multirotor (rotor-thrust actions) on the nominal rigid-body plant, joint robots through the task env
with nominal parameters (a floating base, as a quadruped's, put in its logged state from the /odom
nearest in header stamp to each /joint_states row).
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from deploy.rotations import quat_to_rotmat
from deploy.spec import PolicySpec
from replay.bag import BagReader, StreamHealthCounter, find_topic
from replay.candidates import ReplayError
from replay.dynamics_gap import (
    RIGID_QUANTITIES,
    GapStats,
    JointLog,
    Plant,
    joint_gap_stats,
    joint_quantities,
    rigid_gap_stats,
)
from replay.mapping import clock_report, make_log

SEGMENT_ROWS = 4096  # dynamics-gap rows per segment
RESET_JUMP_M = 0.05  # a state step this far from what the velocity explains: an episode reset, not physics
RESET_JUMP_RAD = 0.2
ODOM_MATCH_PERIODS = 0.25  # a joint-state row takes the odometry nearest in stamp, within this many control periods
LATE_PERIODS = 2.5


def nominal_cfg(cfg):
    """`cfg` with every randomization event pinned to its nominal value (ranges of scales and strengths
    at 1, of offsets, payloads and latencies at 0, else at their low end; magnitudes such as a push
    velocity or a bias 0; an interval kept), one model variant, no sensor noise: the simulator a log is
    compared with."""
    from sim.sim_robot import noise_free

    def pin(name: str, v):
        if isinstance(v, tuple) and len(v) == 2:
            lo, hi = v
            x = 1.0 if ("scale" in name or "strength" in name) and lo <= 1 <= hi else 0 if lo <= 0 <= hi else lo
            return (type(lo)(x), type(hi)(x))
        if isinstance(v, (int, float)) and not name.endswith("interval_s"):
            return 0.0
        return v

    cfg = noise_free(cfg)
    events = {
        name: dataclasses.replace(e, params={k: pin(k, v) for k, v in e.params.items()})
        for name, e in cfg.events.items()
    }
    cfg = dataclasses.replace(cfg, events=events)
    return dataclasses.replace(cfg, model_variants=1) if hasattr(cfg, "model_variants") else cfg


def quadrotor_plant(cfg) -> Plant:
    """The nominal rigid-body plant of a multirotor task: its robot's MJCF, motor lag in the middle of
    the randomized range, the robot's thrust clamp, commands acting from the row they are logged at."""
    from sim.robots import find_robot
    from sim.terms import term_param

    robot = find_robot(cfg.robot)
    if robot.rotors is None:
        raise ReplayError(f"robot {cfg.robot} has no rotors: a multirotor task needs them for its plant")
    lo, hi = term_param(cfg.events, "rotor_params", "motor_tau_s", (0.03, 0.03))
    return Plant("nominal", str(robot.model_path), (lo + hi) / 2, robot.rotors.max_thrust_N, robot=cfg.robot)


def _need(reader: BagReader, topic: str, why: str) -> str:
    name = find_topic(reader, topic)
    if name is not None:
        return name
    raise ReplayError(f"{reader.missing_topic('/' + topic, why)}; pass --no-dynamics-gap to skip that pass")


def _odom_state(msg) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    p, q = msg.pose.pose.position, msg.pose.pose.orientation
    v, w = msg.twist.twist.linear, msg.twist.twist.angular
    quat = np.array([q.w, q.x, q.y, q.z])
    lin_b = np.array([v.x, v.y, v.z])
    return (
        np.array([p.x, p.y, p.z]),
        quat,
        quat_to_rotmat(quat / np.linalg.norm(quat)) @ lin_b,
        np.array([w.x, w.y, w.z]),
    )


def _stamp_s(msg) -> float:
    return msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec


class BaseStateMatcher:
    """Pairs joint-state rows with the odometry nearest to them in header stamp, within `tol_s`: the sim
    robot stamps both alike each physics step, a real robot's estimator stamps odometry on its own
    ticks. Odometry is kept until the rows around it are paired (`fill`) and dropped by `prune`, so
    memory is bounded by a segment of rows however long the bag."""

    def __init__(self, tol_s: float):
        self.tol_s = tol_s
        self.t_s: list[float] = []
        self.states: list[np.ndarray] = []  # (13,) base qpos + qvel

    def add(self, t_s: float, state: np.ndarray) -> None:
        self.t_s.append(t_s)
        self.states.append(state)

    def fill(self, row_t_s: np.ndarray) -> np.ndarray:
        """(n, 13) base states for rows stamped `row_t_s` (n,); NaN where no odometry lies within tol_s."""
        out = np.full((len(row_t_s), 13), np.nan)
        if not self.t_s:
            return out
        order = np.argsort(self.t_s, kind="stable")
        t = np.asarray(self.t_s)[order]
        hi = np.clip(np.searchsorted(t, row_t_s), 0, len(t) - 1)
        lo = np.clip(hi - 1, 0, len(t) - 1)
        j = np.where(np.abs(t[lo] - row_t_s) <= np.abs(t[hi] - row_t_s), lo, hi)
        ok = np.abs(t[j] - row_t_s) <= self.tol_s
        out[ok] = np.asarray(self.states)[order[j[ok]]]
        return out

    def prune(self, before_s: float) -> None:
        """Forget odometry no row stamped at or after `before_s` can be paired with."""
        keep = [i for i, t in enumerate(self.t_s) if t >= before_s - self.tol_s]
        self.t_s = [self.t_s[i] for i in keep]
        self.states = [self.states[i] for i in keep]


def _regular(t_s: np.ndarray, period_s: float) -> np.ndarray:
    """(T,) rows after an interval that is forward and under LATE_PERIODS periods: receive times jitter
    by milliseconds on a loaded host, while a longer silence means dropped messages."""
    dt = np.diff(t_s, prepend=t_s[0] - period_s)
    return (dt > 0) & (dt < LATE_PERIODS * period_s)


def _continuous(pos: np.ndarray, vel: np.ndarray, dt_s: float, tol: float) -> np.ndarray:
    """(T,) False at rows whose state jumped from the previous one (an episode reset)."""
    ok = np.ones(len(pos), bool)
    ok[1:] = np.abs(pos[1:] - pos[:-1] - 0.5 * (vel[1:] + vel[:-1]) * dt_s).max(-1) < tol
    return ok


def dynamics_pass(
    reader: BagReader, spec: PolicySpec, cfg, ks: tuple[int, ...], segment_rows: int = SEGMENT_ROWS
) -> dict:
    """Streams the sensor and command topics as control-rate rows, segment by segment, into GapStats.
    A floating-base joint robot needs /odom: its base state is part of the state each window starts from."""
    period_s = 1.0 / spec.control_hz
    horizon = max(ks)
    health: dict[str, StreamHealthCounter] = {}
    t0 = time.perf_counter()
    if spec.action.type == "motor_thrust":
        odom = _need(reader, "odom", "the state for the dynamics gap")
        cmd_topic = _need(reader, "motor_thrust", "the commands for the dynamics gap")
        plant = quadrotor_plant(cfg)
        stats = GapStats(ks, RIGID_QUANTITIES)
        overlap = horizon + plant.warmup_steps(period_s)
        buf: list[np.ndarray] = []
        held = np.full(spec.action_dim, np.nan)

        def process(rows: list[np.ndarray]) -> None:
            a = np.asarray(rows)
            t = a[:, 0]
            clock, _ = clock_report(t, period_s)
            values = {
                "pos_w_m": a[:, 1:4],
                "quat_wxyz": a[:, 4:8],
                "lin_vel_w_mps": a[:, 8:11],
                "ang_vel_b_radps": a[:, 11:14],
                "motor_cmd": a[:, 14:],
            }
            log = make_log(t, values, clock, _regular(t, period_s), str(reader.path))
            valid = np.isfinite(log["motor_cmd"]).all(1) & _continuous(
                log["pos_w_m"], log["lin_vel_w_mps"], period_s, RESET_JUMP_M
            )
            rigid_gap_stats(log, np.nan_to_num(log["motor_cmd"]), plant, stats, valid)

        for m in reader.messages([odom, cmd_topic]):
            health.setdefault(m.topic, StreamHealthCounter(period_s)).add(m.log_time_ns)
            if m.topic == cmd_topic:
                held = np.asarray(m.msg.data, dtype=np.float64)
                continue
            pos, quat, vel_w, ang_b = _odom_state(m.msg)
            buf.append(np.concatenate(([m.log_time_ns / 1e9], pos, quat, vel_w, ang_b, held)))
            if len(buf) >= segment_rows:
                process(buf)
                buf = buf[-overlap:]
        if len(buf) > overlap:
            process(buf)
        model = (
            f"nominal quadrotor plant: {Path(plant.mjcf_path).name}, motor tau {plant.tau_s} s, "
            f"thrust clamp {plant.max_thrust_N} N"
        )
        names = {"axes": ["x", "y", "z"]}
    else:
        from sim.backends.mujoco_cpu import free_joint
        from sim.tasks import make_env

        js_topic = _need(reader, "joint_states", "the joint state for the dynamics gap")
        cmd_topic = _need(reader, "joint_commands", "the commands for the dynamics gap")
        env = make_env(spec.task, 256, nominal_cfg(cfg), seed=0)
        floating = free_joint(env.backend.model) is not None
        odom_topic = _need(reader, "odom", "the floating base state for the dynamics gap") if floating else None
        joints = spec.action.names
        stats = GapStats(ks, joint_quantities(joints, floating))
        buf, pending = [], None
        n = len(joints)
        # a row: receive time, joint pos (n), joint vel (n), target (n), plain target flag, header stamp
        matcher = BaseStateMatcher(ODOM_MATCH_PERIODS / spec.control_hz)

        def process(rows: list[np.ndarray]) -> None:
            a = np.asarray(rows)
            t = a[:, 0]
            ok = _regular(t, period_s)
            pos, vel = a[:, 1 : 1 + n], a[:, 1 + n : 1 + 2 * n]
            ok &= (a[:, 1 + 3 * n] > 0) & _continuous(pos, vel, period_s, RESET_JUMP_RAD)
            base_qpos = base_qvel = None
            if floating:
                base = matcher.fill(a[:, -1])
                base_qpos, base_qvel = base[:, :7], base[:, 7:]
                ok &= np.isfinite(base).all(1) & _continuous(base_qpos[:, :3], base_qvel[:, :3], period_s, RESET_JUMP_M)
            joint_gap_stats(
                JointLog(t, pos, vel, a[:, 1 + 2 * n : 1 + 3 * n], ok, base_qpos, base_qvel), env, joints, stats
            )

        order = None
        for m in reader.messages([js_topic, cmd_topic] + ([odom_topic] if odom_topic is not None else [])):
            health.setdefault(m.topic, StreamHealthCounter(period_s)).add(m.log_time_ns)
            if m.topic == cmd_topic:
                data = np.asarray(m.msg.data, dtype=np.float64)
                if data.size != 3 * n:
                    raise ReplayError(f"{cmd_topic}: {data.size} values, expected 3 x {n} (position, kp_scale, kd)")
                plain = bool(np.all(data[n : 2 * n] == 1.0) and np.isnan(data[2 * n :]).all())
                pending = (data[:n], plain)
                continue
            if m.topic == odom_topic:
                pos, quat, vel_w, ang_b = _odom_state(m.msg)
                matcher.add(_stamp_s(m.msg), np.concatenate((pos, quat / np.linalg.norm(quat), vel_w, ang_b)))
                continue
            if pending is None:
                continue
            if order is None:
                logged = list(m.msg.name)
                missing = [j for j in joints if j not in logged]
                if missing:
                    raise ReplayError(f"{js_topic}: no joints {missing} (it has {logged})")
                order = np.array([logged.index(j) for j in joints])
            buf.append(
                np.concatenate(
                    (
                        [m.log_time_ns / 1e9],
                        np.asarray(m.msg.position)[order],
                        np.asarray(m.msg.velocity)[order],
                        pending[0],
                        [float(pending[1]), _stamp_s(m.msg)],
                    )
                )
            )
            pending = None
            if len(buf) >= segment_rows:
                process(buf)
                buf = buf[-horizon:]
                matcher.prune(buf[0][-1])
        if len(buf) > horizon:
            process(buf)
        env.close()
        model = f"{spec.task} task env, nominal parameters (randomization pinned), no sensor noise"
        names = {"joints": list(joints)}
        if floating:
            model += (
                "; floating base from the odom nearest in header stamp to each joint_states row "
                f"(within {matcher.tol_s * 1e3:g} ms)"
            )
            names["base_axes"] = ["x", "y", "z"]
    wall_s = time.perf_counter() - t0
    if stats.windows == 0:
        raise ReplayError(
            f"bag {reader.path}: no window of {horizon} regular control steps to replay for the dynamics gap"
        )
    logged_s = max(h.result().span_s for h in health.values())
    return {
        "model": model,
        **names,
        "windows": stats.windows,
        "period_s": period_s,
        "k": stats.summary(period_s),
        "health": {t: dataclasses.asdict(h.result()) for t, h in health.items()},
        "wall_s": wall_s,
        "cost_s_per_logged_s": wall_s / max(logged_s, 1e-9),
    }
