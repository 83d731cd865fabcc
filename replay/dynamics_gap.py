"""Dynamics gap: how far the simulator drifts from a logged robot when it replays the logged commands.

From the logged state at many start times, each start is one env of a batched simulation: put it
in that state, apply the logged commands for k steps, compare with the log k steps later. Starts
are processed in chunks and errors summarized by streaming histograms, so memory stays flat however
long the log. Windows that cross a clock jump, a gap or an invalid row are left out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import mujoco
import numpy as np
import torch

from deploy.rotations import attitude_error_rad
from replay.mapping import Log
from sim.actuators import RotorModel
from sim.backends import physics_substeps
from sim.backends.mujoco_cpu import MujocoCpuBackend, free_joint, load_model
from sim.readings import robot_readings


@dataclass(frozen=True)
class Plant:
    """The simulated quadrotor a log is replayed on: MJCF (mass, inertia, yaw gear) and rotor lag."""

    name: str
    mjcf_path: str
    tau_s: float  # first-order motor time constant
    max_thrust_N: float  # rotor command clamp, per rotor
    delay_steps: int = 0  # the command logged at row i acts from row i + delay_steps
    # a robot config (name or YAML): the model is compiled with its rotors, as training compiles it;
    # empty: `mjcf_path` as written, with rotor actuators of its own (a fitted variant from replay.sysid)
    robot: str = ""

    def model(self) -> mujoco.MjModel:
        if self.robot:
            from sim.robots import find_robot, robot_model

            return robot_model(find_robot(self.robot), kind="multirotor").model
        return load_model(self.mjcf_path)

    def __post_init__(self) -> None:
        if not self.tau_s > 0:
            raise ValueError(f"Plant.tau_s must be > 0, got {self.tau_s}")
        if self.delay_steps < 0:
            raise ValueError(f"Plant.delay_steps must be >= 0, got {self.delay_steps}")

    def warmup_steps(self, period_s: float) -> int:
        """Steps of logged commands that bring the rotor state to within e^-8 of its true value."""
        return max(1, math.ceil(8 * self.tau_s / period_s))


# --- pure math -------------------------------------------------------------------------------------
def valid_starts(
    log: Log | JointLog, horizon: int, history: int, valid: np.ndarray | None = None, stride: int = 1
) -> np.ndarray:
    """Start rows whose window [start - history, start + horizon] lies in valid rows with regular clock."""
    ok = log.step_ok.copy()
    if valid is not None:
        ok &= valid
    bad = np.concatenate(([0], np.cumsum(~ok)))  # bad[i] = invalid rows before i
    starts = np.arange(history, len(log) - horizon, stride)
    return starts[bad[starts + horizon + 1] - bad[starts - history] == 0]


class StreamingStats:
    """Mean, median and p90 of non-negative values fed in batches, in memory independent of their
    number: a log-spaced histogram (100 bins a decade from 1e-12, so quantiles within 2.3 %)."""

    EDGES = np.logspace(-12, 3, 1501)

    def __init__(self, width: int):
        self.counts = np.zeros((width, len(self.EDGES) + 1), dtype=np.int64)
        self.total = np.zeros(width)
        self.n = 0

    def add(self, values: np.ndarray) -> None:
        """values (n, width) >= 0."""
        bins = np.searchsorted(self.EDGES, values)  # 0: below 1e-12
        for j in range(values.shape[1]):
            self.counts[j] += np.bincount(bins[:, j], minlength=self.counts.shape[1])
        self.total += values.sum(0)
        self.n += len(values)

    def summary(self, names: tuple[str, ...]) -> dict[str, dict[str, float]]:
        centers = np.concatenate(([0.0], np.sqrt(self.EDGES[:-1] * self.EDGES[1:]), [self.EDGES[-1]]))
        out = {}
        for j, name in enumerate(names):
            cum = np.cumsum(self.counts[j])
            q = {p: float(centers[np.searchsorted(cum, p * self.n)]) if self.n else math.nan for p in (0.5, 0.9)}
            out[name] = {"mean": float(self.total[j] / self.n) if self.n else math.nan, "median": q[0.5], "p90": q[0.9]}
        return out


# --- simulation ------------------------------------------------------------------------------------
def predict_windows(
    log: Log,
    thrust_N: np.ndarray,
    plant: Plant,
    starts: np.ndarray,
    horizon: int,
    backend: MujocoCpuBackend | None = None,
) -> np.ndarray:
    """Simulated states (n, horizon, 13) [pos_w, quat_wxyz, lin_vel_w, ang_vel_b] after each of
    `horizon` steps from the logged state at each start, driven by `thrust_N` (T, num_rotors): the
    logged commands as rotor thrust commands. The rotor state at a start comes from replaying the
    commands of the preceding `plant.warmup_steps` rows. One env per start, all stepped together.
    """
    period_s = log.clock.period_s
    n = len(starts)
    if backend is None or backend.num_envs != n:
        backend = MujocoCpuBackend(plant.model(), n)
    decimation = physics_substeps(backend.model, period_s)
    ids = torch.arange(n)
    qpos = np.concatenate((log["pos_w_m"][starts], log["quat_wxyz"][starts]), -1)
    qvel = np.concatenate((log["lin_vel_w_mps"][starts], log["ang_vel_b_radps"][starts]), -1)
    backend.reset(ids, torch.from_numpy(qpos), torch.from_numpy(qvel))
    backend.xfrc_applied.zero_()
    rotors = RotorModel(n, thrust_N.shape[1], period_s, plant.max_thrust_N, "cpu")
    rotors.set_params(ids, tau_s=torch.full((n,), plant.tau_s), thrust_scale=torch.ones(n))
    cmd = torch.from_numpy(thrust_N).float()
    first = starts - plant.delay_steps - plant.warmup_steps(period_s)
    rotors.reset(ids, cmd[first].clamp(0.0, plant.max_thrust_N))
    for j in range(plant.warmup_steps(period_s)):
        rotors.step(cmd[first + j])
    out = np.empty((n, horizon, 13))
    for j in range(horizon):
        backend.ctrl.copy_(rotors.step(cmd[starts - plant.delay_steps + j]))
        backend.step(decimation)
        out[:, j, :7] = backend.qpos.numpy()
        out[:, j, 7:] = backend.qvel.numpy()
    return out


RIGID_QUANTITIES = (("pos_m", ("x", "y", "z")), ("vel_mps", ("x", "y", "z")), ("att_rad", ("x", "y", "z")))


class GapStats:
    """k-step |error| statistics per quantity, per axis or joint and for the norm, fed window batch by
    window batch (from one log, or segment after segment of a long one): memory independent of length."""

    def __init__(self, ks: tuple[int, ...], quantities: tuple[tuple[str, tuple[str, ...]], ...]):
        self.ks = tuple(ks)
        self.quantities = quantities
        self.stats = {k: {q: StreamingStats(len(names) + 1) for q, names in quantities} for k in self.ks}
        self.windows = 0

    def add(self, k: int, quantity: str, error: np.ndarray) -> None:
        """error (n, width): signed errors of n windows."""
        self.stats[k][quantity].add(np.concatenate((np.abs(error), np.linalg.norm(error, axis=-1, keepdims=True)), -1))

    def add_rigid(
        self,
        k: int,
        prefix: str,
        qpos_pred: np.ndarray,
        lin_vel_w_pred_mps: np.ndarray,
        pos_w_m: np.ndarray,
        quat_wxyz: np.ndarray,
        lin_vel_w_mps: np.ndarray,
    ) -> None:
        """A rigid body's errors (RIGID_QUANTITIES, names prefixed): predicted free-joint qpos (n, 7) and
        world linear velocity (n, 3) against the logged ones."""
        self.add(k, prefix + "pos_m", qpos_pred[:, 0:3] - pos_w_m)
        self.add(k, prefix + "vel_mps", lin_vel_w_pred_mps - lin_vel_w_mps)
        self.add(k, prefix + "att_rad", attitude_error_rad(qpos_pred[:, 3:7], quat_wxyz))

    def summary(self, period_s: float) -> dict:
        return {
            str(k): {
                "horizon_s": k * period_s,
                **{q: self.stats[k][q].summary(names + ("norm",)) for q, names in self.quantities},
            }
            for k in self.ks
        }


def rigid_gap_stats(
    log: Log,
    thrust_N: np.ndarray,
    plant: Plant,
    stats: GapStats,
    valid: np.ndarray | None = None,
    stride: int = 1,
    chunk: int = 512,
) -> int:
    """Adds the k-step errors of `plant` against `log` over every valid start (every `stride`-th row)
    into `stats`; returns the number of windows. Errors: position (m), velocity (world, m/s), attitude
    (rad; per axis the body rotation vector, norm the geodesic angle)."""
    horizon = max(stats.ks)
    history = plant.delay_steps + plant.warmup_steps(log.clock.period_s)
    starts = valid_starts(log, horizon, history, valid, stride)
    if len(starts) == 0:
        return 0
    backend = MujocoCpuBackend(plant.model(), min(chunk, len(starts)))
    for i in range(0, len(starts), backend.num_envs):
        s = starts[i : i + backend.num_envs]
        padded = np.concatenate((s, np.full(backend.num_envs - len(s), s[-1])))  # last chunk: same batch size
        pred = predict_windows(log, thrust_N, plant, padded, horizon, backend)[: len(s)]
        for k in stats.ks:
            p, r = pred[:, k - 1], s + k
            stats.add_rigid(
                k, "", p[:, 0:7], p[:, 7:10], log["pos_w_m"][r], log["quat_wxyz"][r], log["lin_vel_w_mps"][r]
            )
    backend.close()
    stats.windows += len(starts)
    return len(starts)


def dynamics_gap(
    log: Log,
    thrust_N: np.ndarray,
    plant: Plant,
    ks: tuple[int, ...] = (1, 10, 50),
    valid: np.ndarray | None = None,
    stride: int = 1,
    chunk: int = 512,
) -> dict:
    """k-step prediction error of `plant` against `log` for each k in `ks`, over every valid start
    (every `stride`-th row): position (m), velocity (world, m/s), attitude (rad; per axis the body
    rotation vector, norm the geodesic angle). Per axis of |error| and for the norm: mean, median, p90.

    thrust_N (T, num_rotors): the logged commands mapped to rotor thrust commands by the model's
    thrust curve. valid (T,) bool: rows that may be used (e.g. in flight).
    """
    stats = GapStats(ks, RIGID_QUANTITIES)
    if rigid_gap_stats(log, thrust_N, plant, stats, valid, stride, chunk) == 0:
        raise ValueError(f"log {log.source}: no valid window of {max(ks)} steps for plant {plant.name}")
    return {
        "plant": plant.name,
        "windows": stats.windows,
        "period_s": log.clock.period_s,
        "k": stats.summary(log.clock.period_s),
    }


# --- joint robots ----------------------------------------------------------------------------------
BASE_QUANTITIES = tuple((f"base_{q}", axes) for q, axes in RIGID_QUANTITIES)


def joint_quantities(joint_names: tuple[str, ...], floating_base: bool) -> tuple[tuple[str, tuple[str, ...]], ...]:
    """GapStats quantities of a joint robot: its joints, and its base when it floats."""
    joints = (("joint_pos_rad", joint_names), ("joint_vel_radps", joint_names))
    return joints + BASE_QUANTITIES if floating_base else joints


@dataclass(frozen=True)
class JointLog:
    """Control-rate rows of a joint robot's log: the joint state (and a floating base's state) when each
    logged position target started acting, and that target. Rows are in the robot config's actuator order."""

    t_s: np.ndarray  # (T,)
    joint_pos_rad: np.ndarray  # (T, J)
    joint_vel_radps: np.ndarray  # (T, J)
    target_rad: np.ndarray  # (T, J) position target that acts from row i to row i + 1
    step_ok: np.ndarray  # (T,) bool: row i - 1 -> i is one regular control period with a plain target
    base_qpos: np.ndarray | None = None  # (T, 7) free joint qpos [pos_w m, quat_wxyz]; None: fixed base
    base_qvel: np.ndarray | None = None  # (T, 6) free joint qvel [lin vel world m/s, ang vel body rad/s]

    def __len__(self) -> int:
        return len(self.t_s)


def joint_gap_stats(log: JointLog, env, joint_names: tuple[str, ...], stats: GapStats) -> int:
    """Adds the k-step joint position (rad) and velocity (rad/s) errors of the task env `env` (built
    with `make_env`, nominal parameters) into `stats`, and for a floating base its position (m), world
    velocity (m/s) and attitude (rad) errors (quantities as `joint_quantities`): one env per start,
    put in the logged joint and base state (`env.backend.reset`), driven by the logged targets through
    `env.step_command`. Windows in which the env terminated are left out. Returns the number of windows used."""
    import mujoco

    horizon = max(stats.ks)
    starts = valid_starts(log, horizon, 0)
    model = env.backend.model
    jids = [mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_JOINT, n) for n in joint_names]
    missing = [n for n, j in zip(joint_names, jids, strict=True) if j < 0]
    if missing:
        raise ValueError(f"the simulated robot has no joints {missing}")
    if tuple(joint_names) != tuple(env.robot.cfg.joints.names):
        raise ValueError(
            f"the log's joints {tuple(joint_names)} are not the robot config's, "
            f"in its order {env.robot.cfg.joints.names}"
        )
    free = free_joint(model)
    logged_base = log.base_qpos is not None and log.base_qvel is not None
    if free is not None and not logged_base:
        raise ValueError(
            f"the simulated robot has a floating base (free joint '{model.joint(free).name}'): "
            "replaying it needs the logged base state (JointLog.base_qpos, base_qvel)"
        )
    if free is None and logged_base:
        raise ValueError("the log has a base state but the simulated robot has no floating base (free joint)")
    qadr = np.array([model.jnt_qposadr[j] for j in jids])
    dadr = np.array([model.jnt_dofadr[j] for j in jids])
    if free is not None:  # free joint: qpos [pos, quat], qvel [lin vel world, ang vel body]
        base_q = slice(model.jnt_qposadr[free], model.jnt_qposadr[free] + 7)
        base_v = slice(model.jnt_dofadr[free], model.jnt_dofadr[free] + 6)
    n_env = env.num_envs
    used = 0
    for i in range(0, len(starts), n_env):
        s = starts[i : i + n_env]
        padded = np.concatenate((s, np.full(n_env - len(s), s[-1])))
        env.reset()
        ids = env.env_ids
        qpos, qvel = env.backend.qpos.clone(), torch.zeros_like(env.backend.qvel)
        qpos[:, qadr] = torch.from_numpy(log.joint_pos_rad[padded]).to(qpos)
        qvel[:, dadr] = torch.from_numpy(log.joint_vel_radps[padded]).to(qvel)
        if free is not None:
            assert log.base_qpos is not None and log.base_qvel is not None  # checked above: free needs them
            qpos[:, base_q] = torch.from_numpy(log.base_qpos[padded]).to(qpos)
            qvel[:, base_v] = torch.from_numpy(log.base_qvel[padded]).to(qvel)
        env.backend.reset(ids, qpos, qvel)
        env._read_state()  # the env's readings of the logged state, as after a reset
        alive = np.ones(n_env, bool)
        for j in range(horizon):
            target = torch.from_numpy(log.target_rad[padded + j]).to(env.device, torch.float32)
            _, _, terminated, truncated, _ = env.step_command(target)
            alive &= ~(terminated | truncated).cpu().numpy()
            k = j + 1
            if k in stats.ks:
                ok = alive[: len(s)]
                b = env.backend
                # what the simulated robot's sensors would report (sim.readings, as the sim robot publishes them)
                sim = {
                    name: v.double().numpy()[ok]
                    for name, v in robot_readings(
                        env.robot, b.qpos[: len(s)], b.qvel[: len(s)], b.sensordata[: len(s)]
                    ).items()
                }
                r = (s + k)[ok]
                stats.add(k, "joint_pos_rad", sim["joint_pos"] - log.joint_pos_rad[r])
                stats.add(k, "joint_vel_radps", sim["joint_vel"] - log.joint_vel_radps[r])
                if free is not None:
                    assert log.base_qpos is not None and log.base_qvel is not None  # checked above: free needs them
                    stats.add_rigid(
                        k,
                        "base_",
                        np.concatenate((sim["base_pos_w"], sim["base_quat_wxyz"]), -1),
                        sim["base_lin_vel_w"],
                        log.base_qpos[r, :3],
                        log.base_qpos[r, 3:],
                        log.base_qvel[r, :3],
                    )
        used += int(alive[: len(s)].sum())
    stats.windows += used
    return used
