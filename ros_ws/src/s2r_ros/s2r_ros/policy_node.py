"""policy_node: the robot's controller. Sensors in, one command out per control period.

It loads the ONNX policy and the robot config, refuses to start when they differ at the seam (joint
names or order, sizes, rate, spec version), and runs deploy's Controller: idle -> standby (soft start)
-> running -> damping / estop. The step runs on absolute deadlines in its own thread (`trigger:
timer`, the default), or on each message of one sensor stream (`trigger: joint_state`, `imu` or
`odometry`) for a robot whose driver paces the loop. Operator interface: std_srvs/Trigger services
`~/arm`, `~/start`, `~/stop`, `~/reset`; std_msgs/Bool on `estop` (True latches); `autostart` arms and
starts as soon as every sensor is fresh. Once built, the node runs with real-time scheduling and CPU affinity
(`realtime_priority`, `cpu_affinity`; run.go_realtime) where the system permits it, and its start-up objects
out of the garbage collector's reach; diagnostics say what it got.

Topics (relative names, remap as needed):
  in:  joint_states (sensor_msgs/JointState), imu (sensor_msgs/Imu), odom (nav_msgs/Odometry),
       cmd_vel (geometry_msgs/Twist), target (geometry_msgs/PointStamped), estop (std_msgs/Bool)
  out: joint_commands or motor_thrust (std_msgs/Float64MultiArray, see messages.py), policy_io
       (std_msgs/Float64MultiArray), diagnostics (diagnostic_msgs/DiagnosticArray), ~/mode (std_msgs/String)
  QoS: QOS below (commands reliable, sensors the sensor-data profile), each a parameter qos.<topic>.* (qos.py)
"""

from __future__ import annotations

import sys
import threading
import time

import numpy as np
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PointStamped, Twist
from nav_msgs.msg import Odometry
from rclpy.node import Node
from sensor_msgs.msg import Imu, JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import Trigger

from deploy.control_loop import Controller, Mode, RateLoop
from deploy.onnx_policy import OnnxPolicy
from deploy.robot_config import RobotConfig, load_robot_config
from deploy.signals import make_signals, required_readings
from s2r_ros import messages as m
from s2r_ros import qos as q
from s2r_ros.run import REALTIME_PARAMETERS, go_realtime, run

SENSOR_STREAMS = ("joint_state", "imu", "odometry")  # RobotConfig.sensors names this node can watch
MODES = [mode.value for mode in Mode]
PARAMETERS = {  # name: default; the launch files and YAML may set only these (and QOS's qos.<topic>.*)
    "robot_config": "",  # path to the robot's hardware YAML (deploy.robot_config.load_robot_config)
    "policy": "",  # path to the exported policy.onnx
    "autostart": False,  # arm and start once, as soon as every sensor is fresh (simulated robots)
    "trigger": "timer",  # or a sensor stream that paces the loop: joint_state, imu, odometry
    "diagnostics_hz": 2.0,
    "target": [0.0, 0.0, 0.0],  # target position until one arrives on `target`, m
    "command_timeout_s": 0.5,  # a silent cmd_vel operator means: stand still
    **REALTIME_PARAMETERS,  # realtime_priority, cpu_affinity (run.py)
}
QOS = {  # topic: its QoS unless parameters qos.<topic>.* say otherwise (qos.py); + the command topic: q.COMMANDS
    **q.ROBOT_TOPICS,
    "estop": q.DEFAULT,
    "policy_io": q.TopicQoS("reliable", 100),  # the log of every step: none lost to a slow recorder
    "diagnostics": q.DEFAULT,
    "~/mode": q.DEFAULT,
}


class StartupError(RuntimeError):
    """The node cannot run this policy on this robot; the robot stays passive."""


class PolicyNode(Node):
    def __init__(self, **overrides):
        super().__init__("policy_node", **overrides)
        for name, default in PARAMETERS.items():
            self.declare_parameter(name, default)
        get = lambda name: self.get_parameter(name).value  # noqa: E731 a one-line local alias
        self.cfg, self.policy = self._load(get("robot_config"), get("policy"))
        spec = self.policy.spec
        unknown = [s for s in self.cfg.sensors if s not in SENSOR_STREAMS]
        if unknown:
            raise StartupError(f"robot config sensors {unknown} are not streams this node reads {SENSOR_STREAMS}")
        self.trigger = get("trigger")
        if self.trigger not in ("timer",) + SENSOR_STREAMS:
            raise StartupError(f"parameter trigger: '{self.trigger}' is not 'timer' or one of {SENSOR_STREAMS}")
        self.needed = required_readings(spec)
        command_topic = "joint_commands" if self.cfg.is_joint_robot else "motor_thrust"
        qos = q.declare_qos(self, {**QOS, command_topic: q.COMMANDS})
        self.controller = Controller(self.cfg, spec, self.policy, make_signals(spec))
        self.autostart = bool(get("autostart"))
        self.command_timeout_ns = int(get("command_timeout_s") * 1e9)
        self.realtime = "off"  # diagnostics: what go_realtime got

        # latest readings and their receive times (perf_counter_ns: the controller's clock)
        self._lock = threading.Lock()
        self.readings: dict[str, np.ndarray] = {}
        if "target_pos_w" in self.needed:
            self.readings["target_pos_w"] = np.asarray(spec.extra.target_pos_m or get("target"), dtype=np.float64)
        if "command" in self.needed:
            self.readings["command"] = np.zeros(3)  # stand still until an operator says otherwise
        self.stamps: dict[str, int] = {}
        self._command_stamp_ns: int | None = None
        self._joint_reader = m.JointStateReader(self.cfg.actuators)

        self.create_subscription(JointState, "joint_states", self._on_joint_state, qos["joint_states"])
        self.create_subscription(Imu, "imu", self._on_imu, qos["imu"])
        self.create_subscription(Odometry, "odom", self._on_odometry, qos["odom"])
        self.create_subscription(Twist, "cmd_vel", self._on_cmd_vel, qos["cmd_vel"])
        self.create_subscription(PointStamped, "target", self._on_target, qos["target"])
        self.create_subscription(Bool, "estop", self._on_estop, qos["estop"])
        self.command_pub = self.create_publisher(Float64MultiArray, command_topic, qos[command_topic])
        self.io_pub = self.create_publisher(Float64MultiArray, "policy_io", qos["policy_io"])
        self.diag_pub = self.create_publisher(DiagnosticArray, "diagnostics", qos["diagnostics"])
        self.mode_pub = self.create_publisher(String, "~/mode", qos["~/mode"])
        for name in ("arm", "start", "stop", "reset"):
            self.create_service(Trigger, f"~/{name}", self._service(name))
        self.create_timer(1.0 / get("diagnostics_hz"), self._publish_diagnostics)

        self.loop = RateLoop(self.cfg.control_hz)
        self._last_mode: Mode | None = None
        self._thread: threading.Thread | None = None
        self.get_logger().info(
            f"policy {self.policy.path.name} ({spec.task}, sha256 {self.policy.sha256[:12]}) on robot "
            f"'{self.cfg.robot}' at {self.cfg.control_hz:g} Hz, trigger {self.trigger}; needs {list(self.needed)}"
        )

    @staticmethod
    def _load(cfg_path: str, policy_path: str) -> tuple[RobotConfig, OnnxPolicy]:
        if not cfg_path:
            raise StartupError("parameter robot_config is not set (path to the robot's hardware YAML)")
        if not policy_path:
            raise StartupError("parameter policy is not set (path to the exported policy.onnx)")
        policy = OnnxPolicy(policy_path)
        return load_robot_config(cfg_path, policy.spec), policy

    # --- sensors in ------------------------------------------------------------------------------
    def _store(self, stream: str | None, values: dict) -> None:
        now = time.perf_counter_ns()
        with self._lock:
            self.readings.update(values)
            if stream is not None:
                self.stamps[stream] = now
        if stream == self.trigger:
            self.step(now)

    def _on_joint_state(self, msg):
        try:
            values = self._joint_reader(msg)
        except m.MessageError as e:  # no stamp: the watchdog turns a wrong robot into a named fault
            self.get_logger().error(str(e), throttle_duration_sec=1.0)
            return
        self._store("joint_state", values)

    def _on_imu(self, msg):
        self._store("imu", m.imu_readings(msg))

    def _on_odometry(self, msg):
        values = m.odometry_readings(msg)
        if "imu" in self.cfg.sensors:  # the IMU is the attitude and rate source when there is one
            values = {k: v for k, v in values.items() if k in ("base_pos_w", "base_lin_vel_b")}
        self._store("odometry", values)

    def _on_cmd_vel(self, msg):
        self._command_stamp_ns = time.perf_counter_ns()
        self._store(None, m.twist_command(msg))

    def _on_target(self, msg):
        self._store(None, m.point_target(msg))

    def _on_estop(self, msg):
        if msg.data:
            self.controller.estop("e-stop topic", now_ns=time.perf_counter_ns())
            self.get_logger().warning("E-STOP latched; call ~/reset with fresh sensors to release")

    # --- operator services -----------------------------------------------------------------------
    def _service(self, name: str):
        def call(request, response):
            try:
                if name == "arm":
                    self.controller.arm(time.perf_counter_ns())
                elif name == "start":
                    self.controller.start()
                elif name == "stop":
                    self.controller.stop("operator stop")
                else:
                    self.controller.reset(time.perf_counter_ns())
                response.success, response.message = True, f"mode {self.controller.mode.value}"
            except Exception as e:  # noqa: BLE001 - refusals are answers, not crashes
                response.success, response.message = False, str(e)
            return response

        return call

    # --- the control step ------------------------------------------------------------------------
    def step(self, now_ns: int) -> None:
        with self._lock:
            readings = dict(self.readings)
            stamps = dict(self.stamps)
        if (
            "command" in self.needed
            and self._command_stamp_ns is not None
            and now_ns - self._command_stamp_ns > self.command_timeout_ns
        ):
            readings["command"] = np.zeros(3)  # an operator who went silent asks for standing still
        ctl = self.controller
        if self.autostart:
            self._autostart(now_ns, readings, stamps)
        t0 = time.perf_counter_ns()
        cmd = ctl.step(now_ns, readings, stamps)
        self.command_pub.publish(m.command_msg(cmd.command, cmd.kp_scale, cmd.kd, self.cfg.is_joint_robot))
        compute_us = (time.perf_counter_ns() - t0) / 1e3
        if cmd.obs is not None:
            jitter_us = (
                (now_ns - self.loop.last_deadline_ns) / 1e3
                if self.trigger == "timer" and self.loop.last_deadline_ns
                else 0.0
            )
            timing = (now_ns / 1e9, jitter_us, compute_us, MODES.index(cmd.mode.value))
            self.io_pub.publish(m.policy_io_msg(cmd.obs, cmd.action, cmd.command, timing))
        if cmd.mode is not self._last_mode:
            self._last_mode = cmd.mode
            self.mode_pub.publish(String(data=cmd.mode.value))
            if cmd.fault:
                self.get_logger().warning(f"mode {cmd.mode.value}: {cmd.fault}")
            else:
                self.get_logger().info(f"mode {cmd.mode.value}")

    def _autostart(self, now_ns, readings, stamps) -> None:
        """Arm and start once, when every reading first arrives; after a fault the operator decides."""
        ctl = self.controller
        if ctl.mode is Mode.IDLE and all(k in readings for k in self.needed):
            ctl.guard.observe(readings, stamps)
            if not ctl.guard.stale_reasons(now_ns) and (
                not self.cfg.is_joint_robot or ctl.guard.last_joint_pos is not None
            ):
                ctl.arm(now_ns)
                ctl.start()
                self.autostart = False

    def run_timer_loop(self) -> None:
        """The timer trigger: steps on absolute deadlines in this thread until shutdown."""

        def step(now_ns: int) -> None:
            try:
                self.step(now_ns)
            except Exception as e:  # noqa: BLE001 - the loop must outlive a failed publish or log
                self.get_logger().error(f"control step failed: {type(e).__name__}: {e}", throttle_duration_sec=1.0)

        self.loop.run(step)

    def stop_loop(self) -> None:
        """Stop stepping and leave the robot in its safe state (damping or disarmed), not on a stale command."""
        self.loop.stop()
        if self._thread is not None:
            self._thread.join(timeout=1.0)
        safe = self.controller.guard.safe_command()
        self.command_pub.publish(m.command_msg(safe.command, safe.kp_scale, safe.kd, self.cfg.is_joint_robot))

    # --- diagnostics -----------------------------------------------------------------------------
    def _publish_diagnostics(self) -> None:
        ctl, st = self.controller, self.loop.stats()
        fault = ctl.guard.last_fault
        level = DiagnosticStatus.OK if ctl.mode in (Mode.RUNNING, Mode.STANDBY, Mode.IDLE) else DiagnosticStatus.ERROR
        values = {
            "mode": ctl.mode.value,
            "fault": ctl.fault_reason or "",
            "last_fault": fault.reason if fault else "",
            "loops": st.loops,
            "overruns": st.overruns,
            "missed_periods": st.missed_periods,
            "jitter_p50_us": f"{st.jitter_p50_us:.1f}",
            "jitter_p99_us": f"{st.jitter_p99_us:.1f}",
            "jitter_max_us": f"{st.jitter_max_us:.1f}",
            "compute_p99_us": f"{st.compute_p99_us:.1f}",
            "realtime": self.realtime,
            "clipped_steps": ctl.guard.clipped_steps,
            "policy_sha256": self.policy.sha256,
        }
        status = DiagnosticStatus(
            level=level, name="s2r/policy_node", message=ctl.mode.value, hardware_id=self.cfg.robot
        )
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(msg)


def _start(node: PolicyNode) -> None:
    node.realtime = go_realtime(node)
    if node.trigger == "timer":
        node._thread = threading.Thread(target=node.run_timer_loop, name="control_loop", daemon=True)
        node._thread.start()


def _stop(node: PolicyNode) -> None:
    node.stop_loop()
    node.get_logger().info("stopped: safe command sent")


def main(args=None) -> int:
    return run("policy_node", PolicyNode, _start, _stop, args)


if __name__ == "__main__":
    sys.exit(main())
