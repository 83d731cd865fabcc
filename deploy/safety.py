"""SafetyGuard: decides when the robot must stop obeying the policy, and what to send instead.

Faults are judged from the sensors (stale stream, NaN/inf, joint beyond its hard limit), from the policy
(NaN/inf action) and from the operator (e-stop). Every fault carries a sentence saying what happened,
kept in a bounded log, because "it stopped" is useless on the desk. The safe command is damping for a
joint robot (hold nothing, resist motion: kp 0, kd from the config) and disarm (zero thrust) for a
quadrotor. All times are integer nanoseconds on the caller's monotonic clock.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from deploy.robot_config import ConfigError, RobotConfig

JOINT_POS_KEY = "joint_pos"  # joint robots: measured joint positions, rad, in RobotConfig.actuators order
FAULT_LOG_SIZE = 1000


class SafetyError(RuntimeError):
    """A safety operation was refused (e.g. e-stop reset while sensors are stale)."""


@dataclass(frozen=True)
class Fault:
    time_ns: int
    kind: str  # stale | nonfinite | joint_limit | action | estop | error | stop
    reason: str


@dataclass(frozen=True)
class SafeCommand:
    """What to send when the policy must not be obeyed. `kd` None: thrust robot (no gains)."""

    command: np.ndarray  # actuator order: hold-position targets (rad) or zero thrust (N)
    kp_scale: float  # multiplies the drive's position gain: 0 in the safe state
    kd: np.ndarray | None  # absolute damping gains, N m s/rad


class SafetyGuard:
    def __init__(self, cfg: RobotConfig):
        if cfg.command_type == "joint_torque":
            # the safe command here is a position target with kp 0; a torque drive would need its own PD
            raise ConfigError(
                "joint_torque robots are not supported yet: damping and soft start need a torque-level PD"
            )
        self.cfg = cfg
        self.n = len(cfg.actuators)
        self.stale_after_ns = cfg.watchdog_periods * cfg.period_ns
        self.command_low = np.asarray(cfg.command_low, dtype=np.float64)
        self.command_high = np.asarray(cfg.command_high, dtype=np.float64)
        m = cfg.joint_pos_margin_rad
        self._pos_fault_low = np.asarray(cfg.joint_pos_low_rad, dtype=np.float64) - m
        self._pos_fault_high = np.asarray(cfg.joint_pos_high_rad, dtype=np.float64) + m
        self._damping_kd = np.asarray(cfg.damping_kd_Nms_per_rad, dtype=np.float64)
        self.last_stamp_ns: dict[str, int] = {}  # last receive time per sensor stream
        self.last_joint_pos: np.ndarray | None = None  # last finite measurement, for the damping target
        self.estopped = False
        self.faults: deque[Fault] = deque(maxlen=FAULT_LOG_SIZE)
        self.clipped_steps = 0  # steps whose command needed clipping to the hard limits

    # --- bookkeeping ---------------------------------------------------------------------------
    def fault(self, now_ns: int, kind: str, reason: str) -> Fault:
        f = Fault(now_ns, kind, reason)
        self.faults.append(f)
        return f

    @property
    def last_fault(self) -> Fault | None:
        return self.faults[-1] if self.faults else None

    def observe(self, sensors: dict, stamps: dict[str, int]) -> None:
        """Record receive times and the last finite joint positions, without judging anything."""
        for name, t in stamps.items():
            if t is not None and t > self.last_stamp_ns.get(name, -1):
                self.last_stamp_ns[name] = int(t)
        q = sensors.get(JOINT_POS_KEY)
        if self.cfg.is_joint_robot and q is not None:
            q = np.asarray(q, dtype=np.float64).reshape(-1)
            if q.shape == (self.n,) and np.isfinite(q).all():
                self.last_joint_pos = q.copy()

    # --- checks --------------------------------------------------------------------------------
    def stale_reasons(self, now_ns: int) -> list[str]:
        """One sentence per watched stream silent for watchdog_periods control periods or more."""
        reasons = []
        limit_ms = self.stale_after_ns / 1e6
        for name in self.cfg.sensors:
            t = self.last_stamp_ns.get(name)
            if t is None:
                reasons.append(f"sensor '{name}' stale: no message received yet")
            elif now_ns - t >= self.stale_after_ns:
                reasons.append(
                    f"sensor '{name}' stale: no message for {(now_ns - t) / 1e6:.1f} ms "
                    f"(limit {self.cfg.watchdog_periods} periods = {limit_ms:.1f} ms)"
                )
        return reasons

    def check_sensors(self, now_ns: int, sensors: dict, stamps: dict[str, int]) -> Fault | None:
        """Watchdog, NaN/inf and joint-limit check; the first fault found is logged and returned."""
        self.observe(sensors, stamps)
        stale = self.stale_reasons(now_ns)
        if stale:
            return self.fault(now_ns, "stale", "; ".join(stale))
        for name, value in sensors.items():
            try:
                x = np.asarray(value, dtype=np.float64).reshape(-1)
            except (TypeError, ValueError):
                return self.fault(now_ns, "nonfinite", f"sensor value '{name}' is not numeric: {value!r:.80}")
            bad = np.flatnonzero(~np.isfinite(x))
            if bad.size:
                i = int(bad[0])
                label = f" ({self.cfg.actuators[i]})" if name == JOINT_POS_KEY and x.size == self.n else ""
                return self.fault(now_ns, "nonfinite", f"sensor value '{name}'[{i}]{label} is {x[i]}")
        if self.cfg.is_joint_robot:
            q = sensors.get(JOINT_POS_KEY)
            if q is None:
                return self.fault(
                    now_ns, "error", f"no '{JOINT_POS_KEY}' reading among the sensors ({sorted(sensors)})"
                )
            q = np.asarray(q, dtype=np.float64).reshape(-1)
            if q.shape != (self.n,):
                return self.fault(now_ns, "error", f"'{JOINT_POS_KEY}' has {q.size} values for {self.n} joints")
            out = np.flatnonzero((q < self._pos_fault_low) | (q > self._pos_fault_high))
            if out.size:
                i = int(out[0])
                lo, hi = self.cfg.joint_pos_low_rad[i], self.cfg.joint_pos_high_rad[i]
                by = lo - q[i] if q[i] < lo else q[i] - hi
                return self.fault(
                    now_ns,
                    "joint_limit",
                    f"joint {self.cfg.actuators[i]} at {q[i]:.3f} rad is {by:.3f} rad beyond its hard limit "
                    f"[{lo:g}, {hi:g}] (margin {self.cfg.joint_pos_margin_rad:g} rad)",
                )
        return None

    def check_action(self, now_ns: int, action) -> Fault | None:
        """A policy that outputs NaN/inf (or the wrong size) must never reach the actuators."""
        a = np.asarray(action, dtype=np.float64).reshape(-1)
        if a.size != self.n:
            return self.fault(now_ns, "action", f"policy action has {a.size} values for {self.n} actuators")
        bad = np.flatnonzero(~np.isfinite(a))
        if bad.size:
            i = int(bad[0])
            return self.fault(now_ns, "action", f"policy action [{i}] ({self.cfg.actuators[i]}) is {a[i]}")
        return None

    def clip(self, command) -> np.ndarray:
        """Clip to the robot's hard command limits (rad, N m or N), whatever the policy's spec says."""
        c = np.asarray(command, dtype=np.float64).reshape(-1)
        clipped = np.clip(c, self.command_low, self.command_high)
        if not np.array_equal(clipped, c):
            self.clipped_steps += 1
        return clipped

    # --- e-stop --------------------------------------------------------------------------------
    def trigger_estop(self, now_ns: int, reason: str = "e-stop requested") -> Fault:
        self.estopped = True
        return self.fault(now_ns, "estop", reason)

    def reset_estop(self, now_ns: int) -> None:
        """Unlatch, only when every watched sensor is fresh (the robot's state is known)."""
        stale = self.stale_reasons(now_ns)
        if stale:
            raise SafetyError("e-stop reset refused: " + "; ".join(stale))
        self.estopped = False

    # --- safe state ----------------------------------------------------------------------------
    def safe_command(self) -> SafeCommand:
        """Joint robot: damping (target = last measured position, kp 0, kd damping). Quadrotor: disarm."""
        if not self.cfg.is_joint_robot:
            return SafeCommand(np.zeros(self.n), 0.0, None)
        q = self.last_joint_pos if self.last_joint_pos is not None else np.asarray(self.cfg.default_pos_rad)
        return SafeCommand(np.clip(q, self.command_low, self.command_high), 0.0, self._damping_kd.copy())

    def passive_command(self) -> SafeCommand:
        """Idle: motors off. Joint robot: no gains at all; quadrotor: zero thrust."""
        if not self.cfg.is_joint_robot:
            return SafeCommand(np.zeros(self.n), 0.0, None)
        q = self.last_joint_pos if self.last_joint_pos is not None else np.asarray(self.cfg.default_pos_rad)
        return SafeCommand(np.clip(q, self.command_low, self.command_high), 0.0, np.zeros(self.n))
