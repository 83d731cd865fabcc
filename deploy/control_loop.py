"""The robot-side control loop: a fixed-rate clock and the state machine that owns the robot.

`RateLoop` wakes on absolute deadlines (start + k * period), so timing errors never accumulate, and
keeps jitter and compute-time statistics. `Controller` is the state machine
idle -> standby (soft start) -> running -> damping / estop; each `step` returns the one `Command` to send.
Neither imports ROS: the ROS node feeds sensors in and publishes commands out.
All times are integer nanoseconds on one monotonic clock (time.perf_counter_ns by default); sensor
receive stamps must come from the same clock.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

import numpy as np

from deploy.action_mapper import ActionMapper
from deploy.arrays import step_toward
from deploy.obs_builder import PolicyInput
from deploy.robot_config import RobotConfig, check_against_spec
from deploy.safety import Fault, SafeCommand, SafetyError, SafetyGuard
from deploy.spec import PolicySpec

SPIN_NS = 200_000  # sleep until this close to a deadline, then spin: time.sleep overshoots by ~50-100 us


# ---------------------------------------------------------------------------------------------------
# fixed-rate loop
# ---------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class LoopStats:
    loops: int
    overruns: int  # waits that began after their deadline (the step took longer than the period)
    missed_periods: int  # deadlines skipped because of overruns
    jitter_p50_us: float  # wake-up time minus deadline
    jitter_p99_us: float
    jitter_max_us: float
    compute_p50_us: float  # wake-up to the next wait(): the step's own time
    compute_p99_us: float
    compute_max_us: float

    def to_dict(self) -> dict:
        return dict(self.__dict__)


class _Samples:
    """The last `size` samples (ns) in a preallocated ring, so a long run neither grows nor allocates."""

    def __init__(self, size: int):
        self.buf = np.zeros(size, dtype=np.int64)
        self.count = 0

    def add(self, value_ns: int) -> None:
        self.buf[self.count % self.buf.size] = value_ns
        self.count += 1

    def percentiles_us(self) -> tuple[float, float, float]:
        x = self.buf[: min(self.count, self.buf.size)]
        if x.size == 0:
            nan = float("nan")
            return nan, nan, nan
        p50, p99 = np.percentile(x, (50, 99))
        return float(p50) / 1e3, float(p99) / 1e3, float(x.max()) / 1e3


class RateLoop:
    """Calls on absolute deadlines t0 + k * period. A late step skips the deadlines it missed (no
    catch-up burst) and counts an overrun. Sleeps with time.sleep until `spin_ns` before the deadline,
    then spins on the clock, which keeps p99 wake-up jitter well under 1 ms on an idle Linux core."""

    def __init__(
        self,
        rate_hz: float,
        clock: Callable[[], int] = time.perf_counter_ns,
        sleep: Callable[[float], None] = time.sleep,
        spin_ns: int = SPIN_NS,
        window: int = 100_000,
    ):
        if not rate_hz > 0:
            raise ValueError(f"rate_hz must be > 0, got {rate_hz}")
        self.rate_hz = rate_hz
        self.period_ns = round(1e9 / rate_hz)
        self.clock, self.sleep, self.spin_ns = clock, sleep, spin_ns
        self.t0_ns: int | None = None
        self.k = 0  # index of the next deadline
        self.last_deadline_ns: int | None = None
        self._window = window
        self._running = False
        self.reset_stats()

    def reset_stats(self) -> None:
        self.loops = self.overruns = self.missed_periods = 0
        self._jitter = _Samples(self._window)
        self._compute = _Samples(self._window)
        self._woke_ns: int | None = None

    def start(self) -> None:
        self.t0_ns = self.clock()
        self.k = 1
        self._woke_ns = None

    def wait(self) -> int:
        """Sleep until the next deadline; returns the wake-up time (ns)."""
        if self.t0_ns is None:
            self.start()
        t0_ns = self.t0_ns
        assert t0_ns is not None
        now = self.clock()
        if self._woke_ns is not None:
            self._compute.add(now - self._woke_ns)
        deadline = t0_ns + self.k * self.period_ns
        if now > deadline:
            self.overruns += 1
            k_next = (now - t0_ns) // self.period_ns + 1  # first deadline still ahead
            self.missed_periods += k_next - self.k
            self.k = k_next
            deadline = t0_ns + self.k * self.period_ns
        remaining = deadline - self.clock()
        if remaining > self.spin_ns:
            self.sleep((remaining - self.spin_ns) / 1e9)
        woke = self.clock()
        while woke < deadline:
            woke = self.clock()
        self._jitter.add(woke - deadline)
        self.last_deadline_ns = deadline
        self.k += 1
        self.loops += 1
        self._woke_ns = woke
        return woke

    def run(
        self, step: Callable[[int], object], duration_s: float | None = None, max_loops: int | None = None
    ) -> LoopStats:
        """Call `step(wake_ns)` each period until `duration_s` of deadlines, `max_loops` or `stop()`."""
        self.start()
        t0_ns = self.t0_ns
        assert t0_ns is not None
        self._running = True
        end_ns = None if duration_s is None else t0_ns + round(duration_s * 1e9)
        try:
            while self._running and (max_loops is None or self.loops < max_loops):
                if end_ns is not None and t0_ns + self.k * self.period_ns > end_ns:
                    break
                step(self.wait())
        finally:
            if self._woke_ns is not None:
                self._compute.add(self.clock() - self._woke_ns)
                self._woke_ns = None
            self._running = False
        return self.stats()

    def stop(self) -> None:
        """Make `run` return after the current step (callable from another thread)."""
        self._running = False

    def stats(self) -> LoopStats:
        j50, j99, jmax = self._jitter.percentiles_us()
        c50, c99, cmax = self._compute.percentiles_us()
        return LoopStats(self.loops, self.overruns, self.missed_periods, j50, j99, jmax, c50, c99, cmax)


# ---------------------------------------------------------------------------------------------------
# state machine
# ---------------------------------------------------------------------------------------------------
class Mode(StrEnum):
    IDLE = "idle"  # motors passive (joint robot: no gains; quadrotor: disarmed)
    STANDBY = "standby"  # joint robot: soft start to, then hold, the default pose; quadrotor: armed, zero thrust
    RUNNING = "running"  # policy commands
    DAMPING = "damping"  # after a fault: joint robot damping, quadrotor disarmed; needs reset()
    ESTOP = "estop"  # latched e-stop, same safe command; needs reset() with fresh sensors


class TransitionError(RuntimeError):
    """A state transition that is not allowed from the current mode."""


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields, not Commands
class Command:
    """One step's output, in the robot's actuator order and the command's unit (rad, N m or N).

    Gains are hints for the drive: `kp_scale` multiplies its position gain (1 normal, 0 in
    idle/damping/estop); `kd` None means the drive's own damping, else absolute gains (N m s/rad).
    `obs` and `action` are the policy's input and raw output when running, for the policy_io log.
    """

    t_ns: int
    mode: Mode
    command: np.ndarray
    kp_scale: float
    kd: np.ndarray | None
    obs: np.ndarray | None = None
    action: np.ndarray | None = None
    fault: str | None = None  # why the robot is in damping/estop


class Controller:
    """Owns the robot's mode; `step` turns sensors into the one command to send.

    `policy(obs (1, obs_dim) float32) -> raw action (1, action_dim)`, e.g. an OnnxPolicy.
    `signals(sensors) -> {term name: array (term.size,)}` maps raw readings to the PolicySpec's
    term signals (the ROS node supplies it); `last_action` is filled in here unless it provides one.
    Joint robots must supply `sensors["joint_pos"]` (rad, actuator order). Any exception in
    `signals` or `policy` is a fault like any other: the robot goes to its safe state, never crashes
    holding its last command.
    """

    def __init__(
        self,
        cfg: RobotConfig,
        spec: PolicySpec,
        policy: Callable[[np.ndarray], np.ndarray],
        signals: Callable[[dict], dict],
        guard: SafetyGuard | None = None,
    ):
        check_against_spec(cfg, spec)  # refuse to start on any mismatch
        self.cfg, self.spec = cfg, spec
        self.policy = policy
        self.guard = guard if guard is not None else SafetyGuard(cfg)
        self.policy_input = PolicyInput(spec, signals)
        self.action_mapper = ActionMapper(spec)
        self._obs_labels = spec.obs_names
        self._default_pos = np.asarray(cfg.default_pos_rad, dtype=np.float64)
        self._soft_start_ns = round(cfg.soft_start_s * 1e9)
        self._lock = threading.Lock()  # transitions may come from other threads (e-stop topic)
        self._mode = Mode.IDLE
        self._now_ns = 0  # last step time: the clock for transitions called between steps
        self._ramp_from: np.ndarray | None = None
        self._ramp_t0_ns = 0
        self._ramp_done = False
        self._start_requested = False
        self.fault_reason: str | None = None
        # the operator's command reaches the policy at the rate it did in training (spec.extra.command_max_rate)
        rate = spec.extra.command_max_rate
        self._command_max_step = np.asarray(rate, dtype=np.float64) / spec.control_hz if rate else None
        self._command: np.ndarray | None = None  # what the policy last observed of it

    @property
    def mode(self) -> Mode:
        return self._mode

    # --- transitions ---------------------------------------------------------------------------
    def arm(self, now_ns: int | None = None) -> None:
        """idle -> standby: begin the soft start (joint robot) or arm at zero thrust (quadrotor)."""
        with self._lock:
            self._require(Mode.IDLE, "arm")
            now = self._now_ns if now_ns is None else now_ns
            stale = self.guard.stale_reasons(now)
            if stale:
                raise SafetyError("arm refused: " + "; ".join(stale))
            if self.cfg.is_joint_robot and self.guard.last_joint_pos is None:
                raise SafetyError("arm refused: no finite joint position measured yet")
            self._ramp_from = None
            self._ramp_done = not self.cfg.is_joint_robot
            self._start_requested = False
            self._mode = Mode.STANDBY

    def start(self) -> None:
        """standby -> running; during a soft start, running begins once the ramp ends."""
        with self._lock:
            self._require(Mode.STANDBY, "start")
            self._start_requested = True
            if self._ramp_done:
                self._enter_running()

    def stop(self, reason: str = "stop requested") -> None:
        """standby/running -> damping (an operator's stop that is not an e-stop)."""
        with self._lock:
            self._require((Mode.STANDBY, Mode.RUNNING), "stop")
            self._enter_damping(self.guard.fault(self._now_ns, "stop", reason))

    def estop(self, reason: str = "e-stop requested", now_ns: int | None = None) -> None:
        """Any mode -> estop, latched until reset()."""
        with self._lock:
            f = self.guard.trigger_estop(self._now_ns if now_ns is None else now_ns, reason)
            self._mode = Mode.ESTOP
            self.fault_reason = f.reason

    def reset(self, now_ns: int | None = None) -> None:
        """damping/estop -> idle, only with every sensor fresh (SafetyError otherwise)."""
        with self._lock:
            self._require((Mode.DAMPING, Mode.ESTOP), "reset")
            now = self._now_ns if now_ns is None else now_ns
            if self._mode is Mode.ESTOP:
                self.guard.reset_estop(now)
            else:
                stale = self.guard.stale_reasons(now)
                if stale:
                    raise SafetyError("reset refused: " + "; ".join(stale))
            self._mode = Mode.IDLE
            self.fault_reason = None

    def _require(self, allowed, action: str) -> None:
        allowed = (allowed,) if isinstance(allowed, Mode) else allowed
        if self._mode not in allowed:
            need = " or ".join(m.value for m in allowed)
            raise TransitionError(f"cannot {action}() in mode '{self._mode.value}' (only from {need})")

    def _enter_running(self) -> None:
        self.policy_input.reset()  # first frame fills the history, as after a training reset
        self._command = None  # and the command starts where the operator's is, as an episode's does
        self._mode = Mode.RUNNING

    def _enter_damping(self, fault: Fault) -> None:
        self._mode = Mode.DAMPING
        self.fault_reason = fault.reason

    # --- the step ------------------------------------------------------------------------------
    def step(self, now_ns: int, sensors: dict[str, np.ndarray], sensor_stamps: dict[str, int]) -> Command:
        with self._lock:
            self._now_ns = now_ns
            g = self.guard
            if g.estopped and self._mode is not Mode.ESTOP:  # latched through the guard directly
                self._mode = Mode.ESTOP
                self.fault_reason = next((f.reason for f in reversed(g.faults) if f.kind == "estop"), "e-stop")
            if self._mode in (Mode.IDLE, Mode.DAMPING, Mode.ESTOP):
                g.observe(sensors, sensor_stamps)
                return self._safe(now_ns, g.passive_command() if self._mode is Mode.IDLE else g.safe_command())
            fault = g.check_sensors(now_ns, sensors, sensor_stamps)
            if fault is not None:
                return self._damp(now_ns, fault)
            if self._mode is Mode.STANDBY:
                return self._standby(now_ns)
            return self._run(now_ns, sensors)

    def _safe(self, now_ns: int, safe: SafeCommand) -> Command:
        return Command(now_ns, self._mode, safe.command, safe.kp_scale, safe.kd, fault=self.fault_reason)

    def _damp(self, now_ns: int, fault: Fault) -> Command:
        self._enter_damping(fault)
        return self._safe(now_ns, self.guard.safe_command())

    def _standby(self, now_ns: int) -> Command:
        if not self.cfg.is_joint_robot:
            return Command(now_ns, Mode.STANDBY, np.zeros(len(self.cfg.actuators)), 1.0, None)
        if self._ramp_from is None:  # the ramp starts from where the robot is on the first standby step
            assert self.guard.last_joint_pos is not None
            self._ramp_from = self.guard.last_joint_pos.copy()
            self._ramp_t0_ns = now_ns
        elapsed = now_ns - self._ramp_t0_ns
        alpha = 1.0 if elapsed >= self._soft_start_ns else max(0.0, elapsed / self._soft_start_ns)
        target = self.guard.clip(self._ramp_from + alpha * (self._default_pos - self._ramp_from))
        cmd = Command(now_ns, Mode.STANDBY, target, 1.0, None)
        if alpha >= 1.0:
            self._ramp_done = True
            if self._start_requested:
                self._enter_running()  # the policy takes over from the next step
        return cmd

    def _run(self, now_ns: int, sensors: dict) -> Command:
        g = self.guard
        try:
            if self._command_max_step is not None and "command" in sensors:
                wanted = np.asarray(sensors["command"], dtype=np.float64)
                prev = self._command
                self._command = wanted.copy() if prev is None else step_toward(prev, wanted, self._command_max_step)
                sensors = {**sensors, "command": self._command}
            obs = self.policy_input(sensors)
            bad = np.flatnonzero(~np.isfinite(obs[0]))
            if bad.size:
                i = int(bad[0])
                return self._damp(
                    now_ns, g.fault(now_ns, "nonfinite", f"observation {self._obs_labels[i]} is {obs[0, i]}")
                )
            action = np.asarray(self.policy(obs), dtype=np.float32).reshape(1, -1)
        except Exception as e:  # noqa: BLE001 - any failure must end in the safe state
            return self._damp(now_ns, g.fault(now_ns, "error", f"policy step failed: {type(e).__name__}: {e}"))
        fault = g.check_action(now_ns, action)
        if fault is not None:
            return self._damp(now_ns, fault)
        self.policy_input.acted(action)
        command = g.clip(self.action_mapper(action)[0])
        return Command(now_ns, Mode.RUNNING, command, 1.0, None, obs=obs[0].copy(), action=action[0].copy())
