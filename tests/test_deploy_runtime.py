"""Deploy runtime without ROS: robot config vs PolicySpec, SafetyGuard, Controller state machine, RateLoop.

Everything but the last tests runs on a fake clock, so the results do not depend on machine load.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np
import pytest

from deploy.control_loop import Command, Controller, Mode, RateLoop, TransitionError
from deploy.robot_config import ConfigError, RobotConfig, check_against_spec, load_robot_config
from deploy.safety import SafetyError, SafetyGuard
from deploy.spec import SPEC_VERSION, ActionSpec, ObsTerm, PolicySpec, SpecError, SpecExtra

CONFIG_DIR = Path(__file__).resolve().parent.parent / "ros_ws" / "src" / "s2r_ros" / "config"
MS = 1_000_000  # ns
JOINTS = ("hip", "thigh", "calf")
DEFAULT = (0.1, 0.8, -1.5)


def joint_spec(**kw) -> PolicySpec:
    d = dict(
        robot="toy",
        task="toy-task",
        control_hz=50.0,
        obs=(
            ObsTerm("joint_pos_rel", JOINTS, (1.0,) * 3),
            ObsTerm("last_action", JOINTS, (1.0,) * 3, history=2),
        ),
        action=ActionSpec("joint_position", JOINTS, (0.5,) * 3, DEFAULT, 10.0, (-1.0, -1.0, -3.0), (1.0, 4.0, -0.5)),
    )
    d.update(kw)
    return PolicySpec(**d)


def joint_cfg(**kw) -> RobotConfig:
    d = dict(
        robot="toy",
        control_hz=50.0,
        command_type="joint_position",
        actuators=JOINTS,
        command_low=(-0.5, -1.0, -3.0),
        command_high=(0.5, 4.0, -0.5),  # hip narrower than the policy's
        joint_pos_low_rad=(-0.5, -1.0, -3.0),
        joint_pos_high_rad=(0.5, 4.0, -0.5),
        joint_pos_margin_rad=0.1,
        default_pos_rad=DEFAULT,
        damping_kd_Nms_per_rad=(1.0, 2.0, 3.0),
        soft_start_s=1.0,
        sensors=("joint_state",),
    )
    d.update(kw)
    return RobotConfig(**d)


def quad_spec() -> PolicySpec:
    m = ("m1", "m2", "m3", "m4")
    return PolicySpec(
        robot="crazyflie",
        task="hover",
        control_hz=100.0,
        obs=(ObsTerm("ang_vel_b", ("x", "y", "z"), (1.0,) * 3),),
        action=ActionSpec("motor_thrust", m, (0.08,) * 4, (0.066,) * 4, 1.0, (0.0,) * 4, (0.15,) * 4),
    )


def quad_cfg() -> RobotConfig:
    return RobotConfig(
        robot="crazyflie",
        control_hz=100.0,
        command_type="motor_thrust",
        actuators=("m1", "m2", "m3", "m4"),
        command_low=(0.0,) * 4,
        command_high=(0.15,) * 4,
        soft_start_s=0.0,
        sensors=("odometry", "imu"),
    )


def rel_signals(sensors: dict) -> dict:
    return {"joint_pos_rel": sensors["joint_pos"] - np.asarray(DEFAULT)}


def joint_controller(policy=None, **cfg_kw) -> Controller:
    policy = policy or (lambda obs: np.zeros((1, 3), np.float32))
    return Controller(joint_cfg(**cfg_kw), joint_spec(), policy, rel_signals)


def sensors(q=DEFAULT):
    return {"joint_pos": np.asarray(q, dtype=np.float64), "joint_vel": np.zeros(3)}


def run_to(ctrl: Controller, t_ns: int, q=DEFAULT) -> Command:
    """One step at `t_ns` with every stream freshly stamped."""
    return ctrl.step(t_ns, sensors(q), {"joint_state": t_ns})


def running(ctrl: Controller, t_ns: int = 0) -> int:
    """Bring a controller with soft_start_s 0 to running; returns the time of the next step."""
    run_to(ctrl, t_ns)
    ctrl.arm()
    ctrl.start()
    assert run_to(ctrl, t_ns + 20 * MS).mode is Mode.STANDBY
    assert ctrl.mode is Mode.RUNNING
    return t_ns + 40 * MS


# --- robot config ---------------------------------------------------------------------------------
def test_config_mismatches_name_what_differs():
    spec = joint_spec()
    check_against_spec(joint_cfg(), spec)
    cases = {
        "joint order differs at index 1: robot has calf, policy expects thigh": dict(
            actuators=("hip", "calf", "thigh"),
            default_pos_rad=(0.1, -1.5, 0.8),
            command_low=(-0.5, -3.0, -1.0),
            command_high=(0.5, -0.5, 4.0),
            joint_pos_low_rad=(-0.5, -3.0, -1.0),
            joint_pos_high_rad=(0.5, -0.5, 4.0),
        ),
        "joints missing on the robot: ['calf']": dict(
            actuators=("hip", "thigh"),
            command_low=(-0.5, -1.0),
            command_high=(0.5, 4.0),
            joint_pos_low_rad=(-0.5, -1.0),
            joint_pos_high_rad=(0.5, 4.0),
            default_pos_rad=(0.1, 0.8),
            damping_kd_Nms_per_rad=(1.0, 1.0),
        ),
        "control rate: robot runs at 100 Hz, policy expects 50 Hz": dict(control_hz=100.0),
        "spec version: robot config is written for 2, policy has 1": dict(spec_version=2),
        "robot: robot is 'other'": dict(robot="other"),
        "default pose of thigh: robot has 0.9 rad": dict(default_pos_rad=(0.1, 0.9, -1.5)),
    }
    for expected, kw in cases.items():
        with pytest.raises(SpecError, match="robot config 'toy'|robot config 'other'") as e:
            check_against_spec(joint_cfg(**kw), spec)
        assert expected in str(e.value), str(e.value)
    # action size, and the extra joint named
    four = ("hip", "thigh", "calf", "knee")
    cfg = joint_cfg(
        actuators=four,
        command_low=(-0.5, -1.0, -3.0, -1.0),
        command_high=(0.5, 4.0, -0.5, 1.0),
        joint_pos_low_rad=(-0.5, -1.0, -3.0, -1.0),
        joint_pos_high_rad=(0.5, 4.0, -0.5, 1.0),
        default_pos_rad=DEFAULT + (0.0,),
        damping_kd_Nms_per_rad=(1.0,) * 4,
    )
    with pytest.raises(SpecError) as e:
        check_against_spec(cfg, spec)
    assert "action size: robot has 4 joints, policy outputs 3" in str(e.value)
    assert "joints the policy does not drive: ['knee']" in str(e.value)
    # a policy written for another spec version (bypassing PolicySpec's own check)
    old = joint_spec()
    object.__setattr__(old, "version", SPEC_VERSION + 1)
    with pytest.raises(
        SpecError, match=f"spec version: policy has {SPEC_VERSION + 1}, this runtime reads {SPEC_VERSION}"
    ):
        check_against_spec(joint_cfg(), old)
    with pytest.raises(SpecError, match="command type: robot takes 'motor_thrust', policy outputs 'joint_position'"):
        check_against_spec(dataclasses.replace(quad_cfg(), robot="toy", control_hz=50.0), spec)
    # the controller refuses to start on a mismatch
    with pytest.raises(SpecError, match="control rate"):
        Controller(joint_cfg(control_hz=500.0), spec, lambda o: o, rel_signals)


def test_hardware_yaml_errors_name_the_field(tmp_path):
    from sim.tasks import make_env

    spec = make_env("arm-reach", 1).spec
    good = (CONFIG_DIR / "arm.yaml").read_text()
    cases = {
        "unknown field(s) ['kp']": good + "kp: 3\n",
        "unknown field(s) ['actuators']": good + "actuators: [a, b]\n",  # names come from the robot config
        "soft_start_s: expected float, got 'slow'": good.replace("soft_start_s: 3.0", "soft_start_s: slow"),
        "damping_kd_Nms_per_rad: has 2 values for 6 actuators": good + "damping_kd_Nms_per_rad: [1, 2]\n",
        "watchdog_periods: must be >= 1": good.replace("watchdog_periods: 3", "watchdog_periods: 0"),
        "needs `robot:`": good.replace("robot: ur5e", ""),
        "unknown robot 'ur6'": good.replace("robot: ur5e", "robot: ur6"),
    }
    for expected, text in cases.items():
        path = tmp_path / "robot.yaml"
        path.write_text(text)
        with pytest.raises((ConfigError, KeyError)) as e:
            load_robot_config(path, spec)
        assert expected in str(e.value), str(e.value)
    with pytest.raises(dataclasses.FrozenInstanceError):
        load_robot_config(CONFIG_DIR / "arm.yaml", spec).control_hz = 1.0


@pytest.mark.parametrize(
    "task,robot", [("quadruped-walk", "quadruped"), ("arm-reach", "arm"), ("quadrotor-hover", "quadrotor")]
)
def test_shipped_robot_configs_match_their_task_spec(task, robot):
    """Names, order, default pose and rate come from the robot config training used; limits from the spec."""
    from sim.tasks import make_env

    spec = make_env(task, 1).spec
    cfg = load_robot_config(CONFIG_DIR / f"{robot}.yaml", spec)
    check_against_spec(cfg, spec)
    assert cfg.command_low == spec.action.low and cfg.command_high == spec.action.high
    assert cfg.watchdog_periods == 3


def test_a_robot_config_in_another_joint_order_is_refused(tmp_path):
    """The wire order is the robot config's: a policy trained on another order does not run on it."""
    import yaml

    from sim.robots import ROBOTS_DIR
    from sim.tasks import make_env

    spec = make_env("arm-reach", 1).spec
    ur5e = yaml.safe_load((ROBOTS_DIR / "ur5e.yaml").read_text())
    j = ur5e["joints"]
    swapped = [1, 0, 2, 3, 4, 5]
    ur5e["joints"] = {
        **j,
        **{k: [j[k][i] for i in swapped] for k in ("names", "default_pos_rad", "kp", "kd", "effort_limit_Nm")},
    }
    ur5e["model"] = str(ROBOTS_DIR / "ur5e.xml")
    (tmp_path / "ur5e_swapped.yaml").write_text(yaml.safe_dump(ur5e))
    (tmp_path / "hw.yaml").write_text("robot: ur5e_swapped.yaml\nsensors: [joint_state]\n")
    with pytest.raises(
        SpecError,
        match="joint order differs at index 0: robot has shoulder_lift_joint, policy expects shoulder_pan_joint",
    ):
        check_against_spec(load_robot_config(tmp_path / "hw.yaml", spec), spec)


# --- safety ---------------------------------------------------------------------------------------
def test_watchdog_trips_after_exactly_three_silent_periods():
    ctrl = joint_controller(soft_start_s=0.0)
    t = running(ctrl)
    last = t - 20 * MS  # the last joint_state arrived with the previous step
    period = 20 * MS
    cmd = ctrl.step(last + 3 * period - 1, sensors(), {})  # no new message for just under 3 periods
    assert cmd.mode is Mode.RUNNING
    cmd = ctrl.step(last + 3 * period, sensors((0.2, 0.7, -1.4)), {})
    assert cmd.mode is Mode.DAMPING and ctrl.mode is Mode.DAMPING
    assert "sensor 'joint_state' stale: no message for 60.0 ms (limit 3 periods = 60.0 ms)" in cmd.fault
    assert ctrl.guard.last_fault.kind == "stale"
    # damping: hold nothing (kp 0), damp with the configured kd, target = measured position
    assert cmd.kp_scale == 0.0
    np.testing.assert_array_equal(cmd.kd, (1.0, 2.0, 3.0))
    np.testing.assert_allclose(cmd.command, (0.2, 0.7, -1.4))
    # stays in damping even when the sensor comes back; reset only with fresh sensors
    assert run_to(ctrl, last + 4 * period).mode is Mode.DAMPING
    with pytest.raises(SafetyError, match="stale"):
        ctrl.reset(now_ns=last + 10 * period)
    ctrl.reset()
    assert ctrl.mode is Mode.IDLE


def test_watchdog_period_count_is_configurable_and_never_received_is_stale():
    g = SafetyGuard(joint_cfg(watchdog_periods=5))
    assert "no message received yet" in g.stale_reasons(0)[0]
    g.observe({}, {"joint_state": 0})
    assert g.stale_reasons(100 * MS - 1) == [] and g.stale_reasons(100 * MS)


def test_nan_sensor_goes_to_damping_with_reason():
    ctrl = joint_controller(soft_start_s=0.0)
    t = running(ctrl)
    cmd = run_to(ctrl, t, q=(0.1, float("nan"), -1.5))
    assert cmd.mode is Mode.DAMPING
    assert cmd.fault == "sensor value 'joint_pos'[1] (thigh) is nan"
    np.testing.assert_allclose(cmd.command, DEFAULT)  # last finite position
    ctrl2 = joint_controller(soft_start_s=0.0)
    t = running(ctrl2)
    cmd = ctrl2.step(t, {**sensors(), "imu_gyro": np.array([0.0, np.inf, 0.0])}, {"joint_state": t})
    assert cmd.mode is Mode.DAMPING and "'imu_gyro'[1]" in cmd.fault and "inf" in cmd.fault


def test_nan_action_goes_to_damping():
    ctrl = joint_controller(policy=lambda obs: np.array([[0.0, np.nan, 0.0]], np.float32), soft_start_s=0.0)
    t = running(ctrl)
    cmd = run_to(ctrl, t)
    assert cmd.mode is Mode.DAMPING and cmd.fault == "policy action [1] (thigh) is nan"
    assert np.isfinite(cmd.command).all()


def test_policy_exception_goes_to_damping():
    def broken(obs):
        raise RuntimeError("boom")

    ctrl = joint_controller(policy=broken, soft_start_s=0.0)
    cmd = run_to(ctrl, running(ctrl))
    assert cmd.mode is Mode.DAMPING and "policy step failed: RuntimeError: boom" in cmd.fault


def test_joint_beyond_hard_limit_is_a_fault():
    ctrl = joint_controller(soft_start_s=0.0)
    t = running(ctrl)
    assert run_to(ctrl, t, q=(0.55, 0.8, -1.5)).mode is Mode.RUNNING  # within the 0.1 rad margin
    cmd = run_to(ctrl, t + 20 * MS, q=(0.65, 0.8, -1.5))
    assert cmd.mode is Mode.DAMPING
    assert cmd.fault == "joint hip at 0.650 rad is 0.150 rad beyond its hard limit [-0.5, 0.5] (margin 0.1 rad)"


def test_estop_latches_and_needs_reset_with_fresh_sensors():
    ctrl = joint_controller(soft_start_s=0.0)
    t = running(ctrl)
    ctrl.estop("button pressed")
    for k in range(3):  # fresh, healthy sensors do not clear it
        cmd = run_to(ctrl, t + k * 20 * MS)
        assert cmd.mode is Mode.ESTOP and cmd.fault == "button pressed" and cmd.kp_scale == 0.0
    with pytest.raises(TransitionError, match=r"cannot start\(\) in mode 'estop'"):
        ctrl.start()
    with pytest.raises(TransitionError, match=r"cannot arm\(\) in mode 'estop'"):
        ctrl.arm()
    # sensors go silent: reset refused, naming the stale stream
    silent = t + 10 * 20 * MS
    ctrl.step(silent, sensors(), {})
    with pytest.raises(SafetyError, match="e-stop reset refused: sensor 'joint_state' stale"):
        ctrl.reset()
    assert ctrl.mode is Mode.ESTOP and ctrl.guard.estopped
    run_to(ctrl, silent + 20 * MS)
    ctrl.reset()
    assert ctrl.mode is Mode.IDLE and not ctrl.guard.estopped
    kinds = [f.kind for f in ctrl.guard.faults]
    assert kinds == ["estop"]


def test_illegal_transitions_raise():
    ctrl = joint_controller()
    with pytest.raises(TransitionError, match=r"cannot start\(\) in mode 'idle' \(only from standby\)"):
        ctrl.start()
    with pytest.raises(TransitionError, match=r"cannot reset\(\) in mode 'idle'"):
        ctrl.reset()
    with pytest.raises(SafetyError, match="arm refused: sensor 'joint_state' stale: no message received yet"):
        ctrl.arm()
    run_to(ctrl, 0)
    ctrl.arm()
    with pytest.raises(TransitionError, match=r"cannot arm\(\) in mode 'standby'"):
        ctrl.arm()


def test_soft_start_ramps_from_current_pose_to_default_then_runs():
    policy_calls = []

    def policy(obs):
        policy_calls.append(obs.copy())
        return np.array([[0.2, -0.2, 0.4]], np.float32)

    ctrl = joint_controller(policy=policy, soft_start_s=1.0)
    q0 = np.array([0.0, 1.2, -2.5])
    run_to(ctrl, 0, q=q0)
    ctrl.arm()
    ctrl.start()  # requested during the ramp: running begins once it ends
    t0 = 100 * MS
    for frac in (0.0, 0.25, 0.5, 0.75):
        # the robot lags the command; the ramp is from where it started, not where it is now
        cmd = run_to(ctrl, t0 + round(frac * 1e9), q=q0)
        assert cmd.mode is Mode.STANDBY and cmd.kp_scale == 1.0 and cmd.kd is None
        np.testing.assert_allclose(cmd.command, q0 + frac * (np.asarray(DEFAULT) - q0), atol=1e-12)
    assert policy_calls == []
    cmd = run_to(ctrl, t0 + 1_000 * MS)
    np.testing.assert_allclose(cmd.command, DEFAULT)
    assert cmd.mode is Mode.STANDBY and ctrl.mode is Mode.RUNNING
    cmd = run_to(ctrl, t0 + 1_020 * MS)
    assert cmd.mode is Mode.RUNNING and len(policy_calls) == 1
    # policy command: offset + scale * action, then the robot's limits; obs/action kept for policy_io
    np.testing.assert_allclose(cmd.command, np.asarray(DEFAULT) + 0.5 * np.array([0.2, -0.2, 0.4]), atol=1e-6)
    np.testing.assert_allclose(cmd.action, (0.2, -0.2, 0.4))
    assert cmd.obs.shape == (9,)


def test_standby_holds_default_pose_until_started():
    ctrl = joint_controller(soft_start_s=0.5)
    run_to(ctrl, 0, q=(0.0, 0.0, -1.0))
    ctrl.arm()
    for k in range(60):
        cmd = run_to(ctrl, k * 20 * MS, q=(0.0, 0.0, -1.0))
    assert cmd.mode is Mode.STANDBY
    np.testing.assert_allclose(cmd.command, DEFAULT)
    ctrl.start()  # ramp done: running at once
    assert ctrl.mode is Mode.RUNNING


def test_running_fills_last_action_like_training():
    actions = iter([[0.1, 0.2, 0.3], [0.4, 0.5, 0.6], [0.0, 0.0, 0.0]])
    ctrl = joint_controller(policy=lambda obs: np.array([next(actions)], np.float32), soft_start_s=0.0)
    t = running(ctrl)
    c1 = run_to(ctrl, t, q=(0.2, 0.8, -1.5))
    c2 = run_to(ctrl, t + 20 * MS, q=(0.2, 0.8, -1.5))
    # obs = joint_pos_rel, last_action(t), last_action(t-1); the first frame fills the history
    np.testing.assert_allclose(c1.obs, [0.1, 0, 0, 0, 0, 0, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(c2.obs, [0.1, 0, 0, 0.1, 0.2, 0.3, 0, 0, 0], atol=1e-6)


def test_commands_are_clipped_to_the_robot_hard_limits():
    ctrl = joint_controller(policy=lambda obs: np.array([[5.0, -50.0, 50.0]], np.float32), soft_start_s=0.0)
    cmd = run_to(ctrl, running(ctrl))
    # policy spec allows hip up to 1.0 rad; the robot only 0.5
    np.testing.assert_allclose(cmd.command, (0.5, -1.0, -0.5))
    assert ctrl.guard.clipped_steps == 1
    g = SafetyGuard(quad_cfg())
    np.testing.assert_allclose(g.clip([-1.0, 0.1, 0.2, np.float32(0.15)]), (0.0, 0.1, 0.15, 0.15))


def test_quadrotor_arms_at_zero_thrust_and_disarms_on_fault():
    thrust_action = np.array([[1.0, 0.0, -1.0, 0.5]], np.float32)
    ctrl = Controller(quad_cfg(), quad_spec(), lambda obs: thrust_action, lambda s: {"ang_vel_b": s["gyro"]})
    stamps = {"odometry": 0, "imu": 0}
    idle = ctrl.step(0, {"gyro": np.zeros(3)}, stamps)
    assert idle.mode is Mode.IDLE and not idle.command.any() and idle.kd is None
    ctrl.arm()
    standby = ctrl.step(5 * MS, {"gyro": np.zeros(3)}, {"odometry": 5 * MS, "imu": 5 * MS})
    assert standby.mode is Mode.STANDBY and not standby.command.any()
    ctrl.start()  # no soft start: running at once
    cmd = ctrl.step(10 * MS, {"gyro": np.zeros(3)}, {"odometry": 10 * MS, "imu": 10 * MS})
    assert cmd.mode is Mode.RUNNING
    np.testing.assert_allclose(cmd.command, (0.146, 0.066, 0.0, 0.106), atol=1e-6)
    # odometry goes silent for 3 periods (30 ms): disarm
    cmd = ctrl.step(40 * MS, {"gyro": np.zeros(3)}, {"imu": 40 * MS})
    assert cmd.mode is Mode.DAMPING and "sensor 'odometry' stale" in cmd.fault
    np.testing.assert_array_equal(cmd.command, np.zeros(4))
    assert cmd.kd is None


# --- rate loop ------------------------------------------------------------------------------------
class FakeClock:
    """perf_counter_ns / sleep pair whose sleep advances time exactly; steps add simulated compute."""

    def __init__(self, t_ns: int = 1_000 * MS, per_read_ns: int = 0):
        self.t = t_ns
        self.per_read_ns = per_read_ns

    def __call__(self) -> int:
        self.t += self.per_read_ns
        return self.t

    def sleep(self, s: float) -> None:
        self.t += round(s * 1e9)


def test_rate_loop_keeps_absolute_deadlines_and_counts_overruns():
    clock = FakeClock()
    loop = RateLoop(100.0, clock=clock, sleep=clock.sleep, spin_ns=0)
    compute_ms = iter([2, 5, 9.9, 25, 1, 1])
    wakes = []

    def step(now_ns):
        wakes.append(now_ns - loop.t0_ns)
        clock.t += round(next(compute_ms) * MS)

    stats = loop.run(step, max_loops=6)
    # no drift from compute time: wakes on the 10 ms grid; the 25 ms step skips the 30 and 40 ms deadlines
    assert wakes == [10 * MS, 20 * MS, 30 * MS, 40 * MS, 70 * MS, 80 * MS]
    assert (stats.loops, stats.overruns, stats.missed_periods) == (6, 1, 2)
    assert stats.jitter_max_us == 0.0
    assert stats.compute_max_us == pytest.approx(25_000.0) and stats.compute_p50_us == pytest.approx(3_500.0)


def test_rate_loop_hybrid_sleep_spins_to_the_deadline():
    clock = FakeClock(per_read_ns=1_000)  # every clock read costs 1 us
    sleeps = []
    loop = RateLoop(500.0, clock=clock, sleep=lambda s: (sleeps.append(s), clock.sleep(s)))
    stats = loop.run(lambda now: None, duration_s=0.02)
    assert stats.loops == 10 and stats.overruns == 0
    assert all(s * 1e9 <= 2 * MS - 200_000 for s in sleeps)  # slept to ~200 us before, then spun
    assert 0.0 <= stats.jitter_max_us <= 1.0


def test_rate_loop_real_time_500hz():
    loop = RateLoop(500.0)
    stats = loop.run(lambda now: None, duration_s=0.3)
    # the machine may be busy: only check the bookkeeping, not tight timing
    assert math.isfinite(stats.jitter_p99_us) and stats.jitter_p99_us >= 0.0
    assert stats.loops + stats.missed_periods in range(148, 151)
    assert stats.loops >= 30


def test_a_real_time_loop_keeps_its_burners_ordinary_and_its_collector_idle():
    """What `s2r bench deploy --load N` relies on: burners started by a real-time process run at ordinary
    scheduling (else they would starve the loop they load), and stop with the block; a loop that allocates
    only short-lived objects after freeze_gc never triggers the collector."""
    import gc
    import json
    import subprocess
    import sys

    from deploy.bench import gc_pauses
    from deploy.realtime import freeze_gc

    in_a_real_time_process = (
        "import json, os\n"
        "from deploy.bench import cpu_burners\n"
        "from deploy.realtime import set_process_realtime\n"
        "why_not = set_process_realtime(10)\n"
        "with cpu_burners(2) as procs:\n"
        "    policies = [os.sched_getscheduler(p.pid) for p in procs]\n"
        "print(json.dumps([why_not, policies, [p.poll() is not None for p in procs], os.SCHED_OTHER]))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", in_a_real_time_process], capture_output=True, text=True, cwd=CONFIG_DIR.parents[3]
    )
    assert out.returncode == 0, out.stderr
    why_not, policies, ended, sched_other = json.loads(out.stdout)
    assert policies == [sched_other] * 2 and ended == [True, True], (why_not, policies)
    freeze_gc()
    try:
        with gc_pauses() as pauses:
            for _ in range(5000):
                np.zeros(3) + {"a": [1.0]}["a"][0]
        assert pauses["gc_collections"] == 0
        with gc_pauses() as pauses:
            kept = [[i] for i in range(5000)]  # a loop that keeps what it allocates: the collector runs
        assert pauses["gc_collections"] >= 1 and pauses["gc_max_pause_us"] > 0 and len(kept) == 5000
    finally:
        gc.unfreeze()


def test_refused_real_time_names_the_missing_permission():
    """A user without the privilege (here: root turned into 'nobody', rtprio limit 0) is told which limit and
    which capability are missing, not only EPERM."""
    import subprocess
    import sys

    as_nobody = (
        "import os\n"
        "import deploy.realtime as rt\n"
        "if os.geteuid() == 0:\n"
        "    os.setgid(65534)\n"
        "    os.setuid(65534)\n"
        "print(rt.set_process_realtime(50))\n"
    )
    out = subprocess.run([sys.executable, "-c", as_nobody], capture_output=True, text=True, cwd=CONFIG_DIR.parents[3])
    assert out.returncode == 0, out.stderr
    if not out.stdout.strip():
        pytest.skip("this user may use SCHED_FIFO 50 without root (an rtprio limit): nothing is refused")
    assert "Operation not permitted: this user's rtprio limit (RLIMIT_RTPRIO, ulimit -r) is 0" in out.stdout
    assert "CAP_SYS_NICE" in out.stdout


def test_guard_refuses_what_it_cannot_make_safe():
    ctrl = joint_controller(soft_start_s=0.0)
    t = running(ctrl)
    cmd = ctrl.step(t, {**sensors(), "frame_id": "base"}, {"joint_state": t})
    assert cmd.mode is Mode.DAMPING and "sensor value 'frame_id' is not numeric" in cmd.fault
    torque_cfg = dataclasses.replace(joint_cfg(), command_type="joint_torque")
    with pytest.raises(ConfigError, match="joint_torque robots are not supported"):
        SafetyGuard(torque_cfg)


def test_the_operator_command_reaches_the_policy_at_the_trained_rate():
    """A command step reaches the policy's observation ramped at spec.extra.command_max_rate, as in
    training; re-entering running starts at the operator's command, as an episode starts at its draw."""
    spec = joint_spec(
        obs=(ObsTerm("command", ("vx", "vy", "wz"), (1.0,) * 3), ObsTerm("joint_pos_rel", JOINTS, (1.0,) * 3)),
        extra=SpecExtra(command_max_rate=(2.0, 1.0, 4.0)),
    )
    signals = lambda s: {**rel_signals(s), "command": s["command"]}  # noqa: E731
    ctrl = Controller(joint_cfg(soft_start_s=0.0), spec, lambda obs: np.zeros((1, 3), np.float32), signals)
    t = running(ctrl)

    def step(command):
        nonlocal t
        t += 20 * MS
        s = {**sensors(), "command": np.asarray(command, dtype=np.float64)}
        return ctrl.step(t, s, {"joint_state": t}).obs[:3]

    np.testing.assert_allclose(step((0.5, 0.0, 0.0)), (0.5, 0.0, 0.0))  # the first command as given
    seen = [step((-0.5, 0.3, 1.0)) for _ in range(30)]
    np.testing.assert_allclose(seen[0], (0.46, 0.02, 0.08), atol=1e-6)  # 50 Hz: 0.04, 0.02, 0.08 a step
    np.testing.assert_allclose(seen[-1], (-0.5, 0.3, 1.0), atol=1e-6)
    assert (np.abs(np.diff(np.array(seen), axis=0)) <= np.array([0.04, 0.02, 0.08]) + 1e-6).all()  # float32 obs
    ctrl.stop()
    ctrl.reset(t)
    running(ctrl, t)
    np.testing.assert_allclose(step((1.0, 0.0, 0.0)), (1.0, 0.0, 0.0))
    with pytest.raises(SpecError, match="command_max_rate"):
        dataclasses.replace(spec, extra=SpecExtra(command_max_rate=(2.0, 1.0))).validate()
