"""`s2r replay`: evaluate candidate policies on a logged rollout (a rosbag2 MCAP bag), streaming.

Two passes over the bag, each holding one chunk of rows and fixed-size statistics, so memory stays
flat however long the log:

1. `policy_io` only (obs, raw action, command, timing of every running control step):
   - action agreement: each candidate's actions recomputed from the logged observations against the
     logged actions, |difference| per action name (max, mean);
   - distribution shift: the logged observations in units of each candidate's training distribution,
     z = (obs - mean) / std with the normalizer statistics stored in its ONNX file, per term;
   - task metrics from the log itself, the current frame of the observation terms unscaled by the
     PolicySpec (so they need no sensor topic): hover position error and crashes, reach error,
     falls and yaw-rate tracking; thresholds from the task config `s2r eval` uses.
2. dynamics gap (unless disabled): the sensor and command topics as control-rate rows, replayed in
   simulation k steps from each logged state (replay.dynamics_gap): the quadrotor on the nominal
   rigid-body plant, joint robots through the task env with nominal parameters (a floating base, as
   the quadruped's, put in its logged state from the /odom nearest in header stamp to each /joint_states row).

The ranking combines `s2r eval`-style simulated evaluation of every candidate under the task's full
randomization with its shift on this log:  score = sim_score - SHIFT_WEIGHT * max(0, shift - 1),
where sim_score is the task's success rate (quadruped: (1 - fall rate) * max(0, 1 - tracking error /
0.5 m/s)) and shift is the mean over observation terms of the RMS z-score (1 = as in training).
"""

from __future__ import annotations

import dataclasses
import html
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploy.onnx_policy import OnnxPolicy, PolicyLoadError
from deploy.signals import quat_to_rotmat
from deploy.spec import PolicySpec, SpecError
from replay.bag import BagError, BagReader, StreamHealthCounter, policy_io_segments
from replay.dynamics_gap import (RIGID_QUANTITIES, GapStats, JointLog, Plant, StreamingStats, joint_gap_stats, joint_quantities,
                                  rigid_gap_stats)
from replay.mapping import clock_report, make_log

POLICY_IO = "/policy_io"
POLICY_IO_FIELDS = ("obs", "action", "command", "timing")
NORMALIZER = ("normalizer.mean", "normalizer.std")  # ONNX initializers of policies.networks.ExportedActor
SHIFT_WEIGHT = 0.1
QUADRUPED_ERROR_SCALE_MPS = 0.5
CHUNK_ROWS = 2048  # policy_io rows per batch
SEGMENT_ROWS = 4096  # dynamics-gap rows per segment
PLOT_ROWS = 500  # first rows kept for the action plot
RESET_JUMP_M = 0.05  # a state step this far from what the velocity explains: an episode reset, not physics
RESET_JUMP_RAD = 0.2
ODOM_MATCH_PERIODS = 0.25  # a joint-state row takes the odometry nearest in stamp, within this many control periods
LATE_PERIODS = 2.5


class ReplayError(ValueError):
    """The log cannot be replayed as asked: a missing topic, field or metadata; a policy that does not fit."""


# --- candidates ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Candidate:
    path: Path
    policy: OnnxPolicy
    obs_mean: np.ndarray  # (obs_dim,) training normalizer statistics
    obs_std: np.ndarray  # (obs_dim,) sqrt(var + eps), what the network divides by

    @property
    def name(self) -> str:
        return self.path.stem if self.path.stem != "policy" else self.path.parent.name


def normalizer_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The observation normalizer's mean and std, read from the ONNX initializers by name."""
    import onnx
    from onnx import numpy_helper

    inits = {i.name: i for i in onnx.load(str(path)).graph.initializer}
    missing = [n for n in NORMALIZER if n not in inits]
    if missing:
        raise PolicyLoadError(f"{path}: no initializers {missing}: not an s2r export with its observation normalizer")
    return tuple(numpy_helper.to_array(inits[n]).astype(np.float64) for n in NORMALIZER)


def load_candidate(path: str | Path, logged: PolicySpec) -> Candidate:
    path = Path(path)
    policy = OnnxPolicy(path)
    try:
        policy.spec.check_compatible(logged)
    except SpecError as e:
        raise ReplayError(f"policy {path} does not fit the logged robot: {e}") from e
    return Candidate(path, policy, *normalizer_stats(path))


# --- fixed-size statistics -------------------------------------------------------------------------
class ColumnStats:
    """Per-column count, sum, sum of squares and max |x| of rows fed in batches."""

    def __init__(self, width: int):
        self.n = 0
        self.sum = np.zeros(width)
        self.sumsq = np.zeros(width)
        self.max_abs = np.zeros(width)

    def add(self, x: np.ndarray) -> None:
        self.n += len(x)
        self.sum += x.sum(0)
        self.sumsq += np.square(x).sum(0)
        if len(x):
            self.max_abs = np.maximum(self.max_abs, np.abs(x).max(0))

    def mean(self) -> np.ndarray:
        return self.sum / max(self.n, 1)

    def rms(self) -> np.ndarray:
        return np.sqrt(self.sumsq / max(self.n, 1))


def term_slices(spec: PolicySpec) -> dict[str, slice]:
    """Each observation term's block in the flat obs vector (all its history frames)."""
    out, i = {}, 0
    for t in spec.obs:
        out[t.name] = slice(i, i + t.dim)
        i += t.dim
    return out


def current_frames(spec: PolicySpec, obs: np.ndarray) -> dict[str, np.ndarray]:
    """(n, obs_dim) -> {term: (n, size)} newest frame of each term, unscaled to the term's units."""
    out = {}
    for t, sl in zip(spec.obs, term_slices(spec).values()):
        out[t.name] = obs[:, sl.start : sl.start + t.size] / np.asarray(t.scale)
    return out


def shift_summary(spec: PolicySpec, z_abs: ColumnStats, beyond3: np.ndarray) -> dict:
    """Per term: RMS z, mean |z| and the fraction of elements beyond 3 sigma; `score` the mean RMS z."""
    terms = {}
    for name, sl in term_slices(spec).items():
        n = max(z_abs.n, 1) * (sl.stop - sl.start)
        terms[name] = {"rms_z": float(np.sqrt(z_abs.sumsq[sl].sum() / n)), "mean_abs_z": float(z_abs.sum[sl].sum() / n),
                       "max_abs_z": float(z_abs.max_abs[sl].max()), "frac_beyond_3sigma": float(beyond3[sl].sum() / n)}
    return {"score": float(np.mean([t["rms_z"] for t in terms.values()])), "terms": terms}


# --- task metrics from the log --------------------------------------------------------------------
class TaskMetrics:
    """The task's evaluation measures computed from logged observations (sim/evaluate.py's
    definitions, streamed: rates per step or per event instead of per episode)."""

    def __init__(self, spec: PolicySpec, cfg):
        self.spec, self.cfg, self.task = spec, cfg, spec.task
        self.rows = 0
        self.err = StreamingStats(1)
        self.events = 0
        self.within = 0
        self._prev_flag = False
        self._fk = None
        self._final: list[float] = []  # arm: final distance per target (one float per episode)
        self._prev_target: np.ndarray | None = None
        self._last_dist = math.nan

    def add(self, obs: np.ndarray) -> None:
        f = current_frames(self.spec, obs)
        cfg = self.cfg
        self.rows += len(obs)
        if self.task == "quadrotor-hover":
            e_b = f["pos_error_b"]
            rot = f["rot_mat"].reshape(-1, 3, 3)
            z = float(self.spec.extra.get("target_pos_m", [0, 0, 0])[2]) + (rot @ e_b[..., None])[:, 2, 0]
            err = np.linalg.norm(e_b, axis=-1)
            self.within += int((err <= cfg.success_radius_m).sum())
            self._count_events(z < cfg.crash_height_m)
        elif self.task == "quadruped-walk":
            err = np.abs(f["command"][:, 2] - f["ang_vel_b"][:, 2])
            self._count_events(-f["projected_gravity"][:, 2] < cfg.fall_tilt_cos)
        elif self.task == "arm-reach":
            err = self._ee_distance(f["joint_pos_rel"] + np.asarray(self.spec.action.offset), f["target_pos"])
            self.within += int((err <= cfg.success_radius_m).sum())
            for d, tgt in zip(err, f["target_pos"]):
                if self._prev_target is not None and np.abs(tgt - self._prev_target).max() > 1e-6:
                    self._final.append(self._last_dist)
                self._prev_target, self._last_dist = tgt, d
        else:
            return
        self.err.add(err[:, None])

    def _count_events(self, flag: np.ndarray) -> None:
        """Rising edges of a per-row condition (a crash, a fall), continued across chunks."""
        prev = np.concatenate(([self._prev_flag], flag[:-1]))
        self.events += int((flag & ~prev).sum())
        if len(flag):
            self._prev_flag = bool(flag[-1])

    def _ee_distance(self, joint_pos: np.ndarray, target: np.ndarray) -> np.ndarray:
        import mujoco

        from sim.robots import find_robot, robot_model

        if self._fk is None:
            robot = robot_model(find_robot(self.cfg.robot), kind="arm")
            model = robot.model
            jids = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, n) for n in self.spec.action.names]
            self._fk = (model, mujoco.MjData(model), [model.jnt_qposadr[j] for j in jids], robot.ee_pos_adr)
        model, data, qadr, adr = self._fk
        out = np.empty(len(joint_pos))
        for i, q in enumerate(joint_pos):
            data.qpos[qadr] = q
            mujoco.mj_fwdPosition(model, data)
            mujoco.mj_sensorPos(model, data)
            out[i] = np.linalg.norm(data.sensordata[adr : adr + 3] - target[i])
        return out

    def summary(self, period_s: float) -> dict:
        s = self.err.summary(("e",))["e"]
        out: dict = {"rows": self.rows, "logged_s": self.rows * period_s}
        if self.task == "quadrotor-hover":
            out.update(mean_pos_error_m=s["mean"], p90_pos_error_m=s["p90"], crashes=self.events,
                       frac_within_success_radius=self.within / max(self.rows, 1),
                       definition=f"position error |pos - target| every running step; crash: below {self.cfg.crash_height_m} m")
        elif self.task == "quadruped-walk":
            out.update(mean_yaw_rate_error_radps=s["mean"], falls=self.events,
                       mean_lin_vel_error_mps=None,
                       definition=f"|yaw-rate command - gyro z| every running step; fall: trunk tilted beyond "
                       f"acos({self.cfg.fall_tilt_cos}); linear tracking |cmd_vel xy - odometry twist xy| from "
                       f"{self.cfg.eval_settle_s} s after each command change, when the bag has /odom and /cmd_vel "
                       f"(the policy does not observe its base velocity)")
        elif self.task == "arm-reach":
            final = np.asarray(self._final + ([self._last_dist] if self._prev_target is not None else []))
            out.update(mean_ee_distance_m=s["mean"], targets=len(final),
                       mean_final_distance_m=float(final.mean()) if len(final) else math.nan,
                       median_final_distance_m=float(np.median(final)) if len(final) else math.nan,
                       success_rate=float((final <= self.cfg.success_radius_m).mean()) if len(final) else math.nan,
                       definition=f"reach error: end-effector distance to the target (forward kinematics of the logged joints) "
                       f"on the last step before each target change; success within {self.cfg.success_radius_m} m")
        return out


# --- pass 1: policy_io -----------------------------------------------------------------------------
def logged_spec(reader: BagReader, fallback: PolicySpec | None) -> PolicySpec:
    text = reader.metadata.get("policy_spec")
    if text is None:
        if fallback is None:
            raise ReplayError(f"bag {reader.path} has no 'policy_spec' custom data and no --policy was given to read it from")
        return fallback
    return PolicySpec.from_json(text)


def _check_fields(segments: dict[str, slice], width: int, spec: PolicySpec, where: str) -> None:
    missing = [f for f in POLICY_IO_FIELDS if f not in segments]
    if missing:
        raise ReplayError(f"{where}: policy_io has no field(s) {missing} (it has {sorted(segments)})")
    size = {f: segments[f].stop - segments[f].start for f in POLICY_IO_FIELDS}
    if size["obs"] != spec.obs_dim or size["action"] != spec.action_dim:
        raise ReplayError(f"{where}: policy_io obs/action sizes {size['obs']}/{size['action']} differ from "
                          f"the PolicySpec's {spec.obs_dim}/{spec.action_dim}")
    if size["timing"] < 1 or max(segments[f].stop for f in POLICY_IO_FIELDS) > width:
        raise ReplayError(f"{where}: policy_io layout {segments} does not fit its {width} values (or has no step time)")


def policy_io_pass(reader: BagReader, spec: PolicySpec, candidates: list[Candidate], cfg) -> dict:
    """Action agreement, shift and task metrics in one stream over policy_io, computed on blocks of
    CHUNK_ROWS messages that share a layout (one ONNX call and array operations per block)."""
    if _find_topic(reader, POLICY_IO) is None:
        raise ReplayError(f"topic {POLICY_IO} is not in bag {reader.path}; it has {sorted(reader.topics)}")
    period_s = 1.0 / spec.control_hz
    agree = [ColumnStats(spec.action_dim) for _ in candidates]
    z_abs = [ColumnStats(spec.obs_dim) for _ in candidates]
    beyond = [np.zeros(spec.obs_dim) for _ in candidates]
    task = TaskMetrics(spec, cfg)
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
        "health": {"policy_io_receive": dataclasses.asdict(health.result()), "controller_steps": dataclasses.asdict(step_clock.result())},
        "action_agreement": {
            c.name: {"max_abs_diff": float(a.max_abs.max()), "mean_abs_diff": float(a.mean().mean()),
                     "per_action": {n: {"max_abs_diff": float(mx), "mean_abs_diff": float(mn)} for n, mx, mn in zip(names, a.max_abs, a.mean())}}
            for c, a in zip(candidates, agree)
        },
        "shift": {c.name: shift_summary(spec, z, b) for c, z, b in zip(candidates, z_abs, beyond)},
        "task_metrics": task.summary(period_s),
        "_plot": {k: np.asarray(v) for k, v in plot.items()},
        "_span_ns": (health.first, health.prev),
    }


def base_tracking_pass(reader: BagReader, cfg, span_ns: tuple[int, int]) -> dict | None:
    """A walking robot's linear-velocity tracking from the log: |cmd_vel (x, y) - odometry twist (x, y)|
    (both body frame) on every /odom message while the controller ran (`span_ns`), from `cfg.eval_settle_s`
    after each command change, as `s2r eval` measures it. None when the bag lacks /odom or /cmd_vel."""
    topics = [_find_topic(reader, name) for name in ("odom", "cmd_vel")]
    if None in topics:
        return None
    odom, cmd_topic = topics
    settle_ns = round(cfg.eval_settle_s * 1e9)
    stats, errors, cmd, changed_ns = StreamingStats(1), [], None, 0
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
            stats.add(np.asarray(errors)[:, None])
            errors.clear()
    if errors:
        stats.add(np.asarray(errors)[:, None])
    if stats.n == 0:
        return None
    s = stats.summary(("e",))["e"]
    return {"mean_lin_vel_error_mps": s["mean"], "p90_lin_vel_error_mps": s["p90"], "lin_vel_samples": stats.n}


# --- pass 2: dynamics gap --------------------------------------------------------------------------
def nominal_cfg(cfg):
    """`cfg` with every randomization range pinned to its nominal value (scales and strengths 1,
    offsets, biases, payloads and latencies 0, else the range's low end), magnitudes (push velocity,
    CoM shift) 0 but not a float that must stay > 0 (a push interval), one model variant, no sensor
    noise: the simulator a log is compared with."""
    from sim.sim_robot import noise_free

    def pin(obj):
        changes = {}
        for f in dataclasses.fields(obj):
            v = getattr(obj, f.name)
            if dataclasses.is_dataclass(v):
                changes[f.name] = pin(v)
            elif isinstance(v, tuple) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
                lo, hi = v
                x = 1.0 if ("scale" in f.name or "strength" in f.name) and lo <= 1 <= hi else 0 if lo <= 0 <= hi else lo
                changes[f.name] = (type(lo)(x), type(hi)(x))
            elif f.name == "model_variants":
                changes[f.name] = 1
            elif isinstance(v, float) and ("check" not in f.metadata or f.metadata["check"][0](0.0)):
                changes[f.name] = 0.0
        return dataclasses.replace(obj, **changes)

    cfg = noise_free(cfg)
    return dataclasses.replace(cfg, randomization=pin(cfg.randomization)) if hasattr(cfg, "randomization") else cfg


def quadrotor_plant(cfg) -> Plant:
    """The nominal rigid-body plant of quadrotor-hover: its MJCF, motor lag in the middle of the
    randomized range, its thrust clamp, commands acting from the row they are logged at."""
    lo, hi = cfg.randomization.motor_tau_s
    return Plant("nominal", str(Path(__file__).resolve().parents[1] / "sim" / "models" / cfg.model), (lo + hi) / 2, cfg.max_thrust_N)


def _find_topic(reader: BagReader, topic: str) -> str | None:
    """The bag's name for `topic`, with or without the leading slash; None if it is not there."""
    return next((name for name in ("/" + topic.lstrip("/"), topic.lstrip("/")) if name in reader.topics), None)


def _need(reader: BagReader, topic: str, why: str) -> str:
    name = _find_topic(reader, topic)
    if name is not None:
        return name
    raise ReplayError(f"topic /{topic} is not in bag {reader.path} ({why}); it has {sorted(reader.topics)}; "
                      "pass --no-dynamics-gap to skip that pass")


def _odom_state(msg) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    p, q = msg.pose.pose.position, msg.pose.pose.orientation
    v, w = msg.twist.twist.linear, msg.twist.twist.angular
    quat = np.array([q.w, q.x, q.y, q.z])
    lin_b = np.array([v.x, v.y, v.z])
    return np.array([p.x, p.y, p.z]), quat, quat_to_rotmat(quat / np.linalg.norm(quat)) @ lin_b, np.array([w.x, w.y, w.z])


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


def dynamics_pass(reader: BagReader, spec: PolicySpec, cfg, ks: tuple[int, ...], segment_rows: int = SEGMENT_ROWS) -> dict:
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
            values = {"pos_w_m": a[:, 1:4], "quat_wxyz": a[:, 4:8], "lin_vel_w_mps": a[:, 8:11], "ang_vel_b_radps": a[:, 11:14],
                      "motor_cmd": a[:, 14:]}
            log = make_log(t, values, clock, _regular(t, period_s), str(reader.path))
            valid = np.isfinite(log.motor_cmd).all(1) & _continuous(log.pos_w_m, log.lin_vel_w_mps, period_s, RESET_JUMP_M)
            rigid_gap_stats(log, np.nan_to_num(log.motor_cmd), plant, stats, valid)

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
        model = f"nominal quadrotor plant: {Path(plant.mjcf_path).name}, motor tau {plant.tau_s} s, thrust clamp {plant.max_thrust_N} N"
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
            joint_gap_stats(JointLog(t, pos, vel, a[:, 1 + 2 * n : 1 + 3 * n], ok, base_qpos, base_qvel), env, joints, stats)

        order = None
        for m in reader.messages([js_topic, cmd_topic] + ([odom_topic] if floating else [])):
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
            buf.append(np.concatenate(([m.log_time_ns / 1e9], np.asarray(m.msg.position)[order], np.asarray(m.msg.velocity)[order],
                                       pending[0], [float(pending[1]), _stamp_s(m.msg)])))
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
            model += f"; floating base from the odom nearest in header stamp to each joint_states row (within {matcher.tol_s * 1e3:g} ms)"
            names["base_axes"] = ["x", "y", "z"]
    wall_s = time.perf_counter() - t0
    if stats.windows == 0:
        raise ReplayError(f"bag {reader.path}: no window of {horizon} regular control steps to replay for the dynamics gap")
    logged_s = max(h.result().span_s for h in health.values())
    return {"model": model, **names, "windows": stats.windows, "period_s": period_s, "k": stats.summary(period_s),
            "health": {t: dataclasses.asdict(h.result()) for t, h in health.items()},
            "wall_s": wall_s, "cost_s_per_logged_s": wall_s / max(logged_s, 1e-9)}


# --- ranking ---------------------------------------------------------------------------------------
def sim_score(task: str, result: dict) -> float:
    if task == "quadruped-walk":
        return (1 - result["fall_rate"]) * max(0.0, 1 - result["mean_lin_vel_error_mps"] / QUADRUPED_ERROR_SCALE_MPS)
    return float(result["success_rate"])


def rank(candidates: list[Candidate], shift: dict, task: str, episodes: int, seed: int = 1) -> list[dict]:
    """Every candidate evaluated in the same randomized simulation (the task's default config, full
    ranges), combined with its shift on the log; best first."""
    from sim.evaluate import evaluate
    from sim.tasks import default_cfg

    out = []
    for c in candidates:
        result = evaluate(c.path, episodes=episodes, seed=seed, task_cfg=default_cfg(task))
        s, sh = sim_score(task, result), shift[c.name]["score"]
        out.append({"policy": c.name, "path": str(c.path), "score": s - SHIFT_WEIGHT * max(0.0, sh - 1.0), "sim_score": s,
                    "shift": sh, "sim_eval": {k: v for k, v in result.items() if isinstance(v, (int, float)) and k != "eval_wall_s"}})
    return sorted(out, key=lambda r: -r["score"])


# --- the command -----------------------------------------------------------------------------------
def replay_bag(bag: str | Path, policies: list[str | Path], out_dir: str | Path, ks: tuple[int, ...] = (1, 10, 50),
               dynamics: bool = True, sim_episodes: int = 100) -> dict:
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
    t0 = time.perf_counter()
    io = policy_io_pass(reader, spec, candidates, cfg)
    io_wall_s = time.perf_counter() - t0
    plot, span_ns = io.pop("_plot"), io.pop("_span_ns")
    if spec.task == "quadruped-walk":
        io["task_metrics"].update(base_tracking_pass(reader, cfg, span_ns) or {})
    metrics = {
        "bag": str(bag), "complete": reader.complete, "recovery_notes": reader.notes, "task": spec.task, "robot": spec.robot,
        "logged_policy_sha256": reader.metadata.get("policy_sha256", ""), "control_hz": spec.control_hz,
        "candidates": {c.name: {"path": str(c.path), "sha256": c.policy.sha256,
                                "flew": c.policy.sha256 == reader.metadata.get("policy_sha256")} for c in candidates},
        **io,
        "throughput_x_realtime": io["logged_s"] / max(io_wall_s, 1e-9),
    }
    if dynamics:
        metrics["dynamics_gap"] = dynamics_pass(reader, spec, cfg, tuple(ks))
    if candidates:
        metrics["ranking"] = {"formula": f"score = sim_score - {SHIFT_WEIGHT} * max(0, shift - 1); sim_score: success rate "
                              f"(quadruped: (1 - fall_rate) * max(0, 1 - lin_vel_error / {QUADRUPED_ERROR_SCALE_MPS} m/s)) "
                              f"over {sim_episodes} episodes of the task's default randomized config; shift: mean over "
                              f"observation terms of the RMS z-score under the candidate's normalizer",
                              "order": rank(candidates, metrics["shift"], spec.task, sim_episodes)}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, default=float))
    write_report(metrics, plot, spec, out_dir)
    return metrics


# --- the report ------------------------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def write_report(metrics: dict, plot: dict, spec: PolicySpec, out_dir: Path) -> None:
    """report.html with PNGs beside it: actions, agreement, shift per term, dynamics gap per axis/joint."""
    plt = _plt()
    images = []
    cands = list(metrics["candidates"])
    logged = len(plot["action"]) > 0
    if logged or any(len(plot[c]) for c in cands):
        n = spec.action_dim
        fig, axes = plt.subplots(n, 1, figsize=(10, 1.6 * n + 1), sharex=True, squeeze=False)
        for j, ax in enumerate(axes[:, 0]):
            if logged:
                ax.plot(plot["action"][:, j], "k", lw=2, label="logged")
            for c in cands:
                ax.plot(plot[c][:, j], lw=1, label=c)
            ax.set_ylabel(spec.action.names[j])
        axes[0, 0].legend(loc="upper right", fontsize=7)
        axes[-1, 0].set_xlabel("control step")
        fig.suptitle("logged raw actions and the candidates' actions recomputed from the logged observations" if logged
                     else "the candidates' raw actions on observations rebuilt from the log's readings")
        _save(fig, out_dir / "actions.png", images, plt)
    agreement = metrics.get("action_agreement")
    if cands:
        fig, axes = plt.subplots(1, 2 if agreement else 1, figsize=(12 if agreement else 7, 3.8), squeeze=False)
        w = 0.8 / len(cands)
        if agreement:
            x = np.arange(spec.action_dim)
            for i, c in enumerate(cands):
                per = agreement[c]["per_action"]
                axes[0, 0].bar(x + i * w, [max(per[a]["max_abs_diff"], 1e-12) for a in spec.action.names], w, label=c)
            axes[0, 0].set_xticks(x + 0.4 - w / 2, spec.action.names, rotation=45, fontsize=7)
            axes[0, 0].set_yscale("log")
            axes[0, 0].set_title("action agreement: max |recomputed - logged|")
        ax = axes[0, -1]
        terms = [t.name for t in spec.obs]
        xt = np.arange(len(terms))
        for i, c in enumerate(cands):
            ax.bar(xt + i * w, [metrics["shift"][c]["terms"][t]["rms_z"] for t in terms], w, label=c)
        ax.axhline(1.0, color="k", lw=0.8, ls="--")
        ax.set_xticks(xt + 0.4 - w / 2, terms, rotation=45, fontsize=7)
        ax.set_title("distribution shift: RMS z per observation term")
        ax.legend(fontsize=7)
        _save(fig, out_dir / ("agreement_shift.png" if agreement else "shift.png"), images, plt)
    gap = metrics.get("dynamics_gap")
    if gap:
        ks = list(gap["k"])
        quantities = [q for q in gap["k"][ks[0]] if q != "horizon_s"]
        fig, axes = plt.subplots(1, len(quantities), figsize=(5 * len(quantities), 3.8), squeeze=False)
        for ax, q in zip(axes[0], quantities):
            labels = list(gap["k"][ks[0]][q])
            x = np.arange(len(labels))
            for i, k in enumerate(ks):
                ax.bar(x + i * 0.8 / len(ks), [max(gap["k"][k][q][a]["mean"], 1e-12) for a in labels], 0.8 / len(ks), label=f"k={k}")
            ax.set_xticks(x + 0.4 - 0.4 / len(ks), labels, rotation=45, fontsize=7)
            ax.set_yscale("log")
            ax.set_title(f"dynamics gap: mean |error| {q}")
        axes[0, 0].legend(fontsize=7)
        _save(fig, out_dir / "dynamics_gap.png", images, plt)
    if "bag" in metrics:
        source = f"bag {'complete' if metrics['complete'] else 'cut short: ' + html.escape('; '.join(metrics['recovery_notes']))}"
    else:
        source = f"foreign log read through mapping {html.escape(str(metrics['mapping']))}; readings {html.escape(str(metrics['readings']))}"
    body = [f"<h1>s2r replay: {html.escape(Path(metrics.get('bag') or metrics['log']).name)}</h1>",
            f"<p>task {metrics['task']}, {metrics['rows']} control steps over {metrics['logged_s']:.1f} s; {source}</p>"]
    if "ranking" in metrics:
        body.append("<h2>Ranking</h2><p>" + html.escape(metrics["ranking"]["formula"]) + "</p>")
        body.append(_table(["policy", "score", "sim_score", "shift"],
                           [[r["policy"], f"{r['score']:.4f}", f"{r['sim_score']:.4f}", f"{r['shift']:.3f}"] for r in metrics["ranking"]["order"]]))
    if agreement:
        body.append("<h2>Action agreement</h2>" + _table(["policy", "flew", "max |diff|", "mean |diff|"], [
            [c, str(metrics["candidates"][c]["flew"]), f"{a['max_abs_diff']:.3g}", f"{a['mean_abs_diff']:.3g}"]
            for c, a in agreement.items()]))
    if "actions" in metrics:
        body.append("<h2>Actions</h2>" + _table(["policy", "mean |action|", "fraction at the clip"], [
            [c] + [html.escape(", ".join(f"{k} {v:.3g}" for k, v in a[key].items())) for key in ("mean_abs", "frac_at_clip")]
            for c, a in metrics["actions"].items()]))
    body.append("<h2>Task metrics from the log</h2>" + _table(["metric", "value"], [[k, html.escape(str(v))] for k, v in metrics["task_metrics"].items()]))
    if gap:
        rows = []
        for k, d in gap["k"].items():
            for q, axes_ in d.items():
                if q != "horizon_s":
                    rows.append([k, q] + [f"{axes_[a]['mean']:.3g}" for a in axes_])
        body.append(f"<h2>Dynamics gap</h2><p>{html.escape(gap['model'])}; {gap['windows']} windows; "
                    f"cost {gap['cost_s_per_logged_s']:.3f} s per logged s</p>")
        body.append(_table(["k", "quantity"] + list(next(iter(gap["k"].values()))[quantities[0]]), rows))
    body.append("<h2>Stream health</h2><pre>" + html.escape(json.dumps(
        {**metrics["health"], **(gap["health"] if gap else {})}, indent=1)) + "</pre>")
    body += [f'<p><img src="{name}"></p>' for name in images]
    (out_dir / "report.html").write_text("<!doctype html><html><head><meta charset='utf-8'><title>s2r replay</title>"
                                         "<style>body{font-family:sans-serif}td,th{padding:2px 8px;border-bottom:1px solid #ccc}</style>"
                                         "</head><body>" + "\n".join(body) + "</body></html>")


def _save(fig, path: Path, images: list, plt) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    images.append(path.name)


def _table(header: list[str], rows: list[list[str]]) -> str:
    h = "".join(f"<th>{html.escape(c)}</th>" for c in header)
    return f"<table><tr>{h}</tr>" + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in r) + "</tr>" for r in rows) + "</table>"


__all__ = ["BagError", "Candidate", "ReplayError", "replay_bag", "normalizer_stats", "nominal_cfg", "policy_io_pass", "dynamics_pass"]
