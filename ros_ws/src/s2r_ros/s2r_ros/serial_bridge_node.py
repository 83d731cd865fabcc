"""serial_bridge_node: a robot's serial link behind the topics sim_robot_node serves.

policy_node cannot tell it from the simulated robot: it publishes joint_states (sensor_msgs/JointState)
and, for a robot with an IMU, imu (sensor_msgs/Imu), and takes joint_commands (std_msgs/Float64MultiArray,
messages.py's (3, n) layout) with the same SENSOR_DATA QoS. The hardware YAML (`robot_config`, the file
policy_node reads) names the robot and, in its `serial:` section (hardware/serial_config.py), the bus;
`port` and `baud` (0: the YAML's) say where and how fast.

- bus: dynamixel (hardware/dynamixel_bus.py). Each control tick (`rate_hz`, default 100 Hz): one sync
  read of position, velocity and current, published as JointState (effort: current x the XM430-W350's
  torque per ampere). Each new command is one sync write of its goal positions, sent as soon as it
  arrives (between reads: the bus is half duplex), not held for the next tick (5 ms on average at 100 Hz):
  the arm's policy loses targets from about 10 ms of loop delay on (tests/test_serial_bridge.py). Safe
  state: the hardware YAML's safe state is "the servos' own damping (kp 0)", which a position-mode servo
  does with its torque off (only its back-EMF damping resists; the emulator's plant does the same). So any
  command with kp_scale 0 (policy_node's idle, damping and estop commands), and no command at all for
  `command_timeout_s` (a controller that died), turns the torque off; a command with kp_scale > 0 writes
  its goals first and then turns the torque on, so a servo never jumps to a stale goal. The servos' own
  position loop ignores kd.
- bus: motor_board (hardware/board_link.py, PROTOCOL.md). Every STATE the board streams (at the YAML's
  control_rate_hz) becomes one JointState and, with an IMU, one Imu; each new joint command becomes one
  COMMAND in POSITION mode with kp = kp_scale x the robot config's kp and the command's kd (NaN: the
  config's kd), sent as soon as it arrives. With no fresh command nothing is sent and the board's own
  command timeout turns its outputs off. The board carries no odometry: odom is not published
  (policy_node's configs for board-driven robots read joint_state and imu only).

A link that fails (no answer several ticks in a row, a port that disappears) is not a crash: the node
stops publishing sensor topics, so policy_node's watchdog sees stale sensors and damps within its
watchdog time; it reopens the port every `reconnect_period_s` (the board link reopens itself on the
same schedule), logging why it cannot (the port named), and publishes again from the first good read.
policy_node then needs its operator's ~/reset, ~/arm and ~/start, which succeed as soon as sensors are
fresh again. Link health goes to diagnostics (diagnostic_msgs/DiagnosticArray, `diagnostics_hz`):
frames, CRC errors, timeouts, link losses, reconnects, the board's ERRORs (each also logged as it comes: a
command timeout that turned the outputs off says so), round-trip p50/p99, the longest gap between two
published states while the link was up.

The node runs with real-time scheduling (`realtime_priority`, deploy/realtime.py) where the system
permits it, as a robot's serial driver does; diagnostics say whether it got it.
"""

from __future__ import annotations

import sys
import threading
import time
from collections import deque
from collections.abc import Callable

import numpy as np
import serial
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from rclpy.node import Node
from rclpy.qos import QoSPresetProfiles
from sensor_msgs.msg import Imu, JointState
from std_msgs.msg import Float64MultiArray

from s2r_ros import messages as m
from s2r_ros.run import REALTIME_PARAMETERS, go_realtime, run

PARAMETERS = {  # name: default; the launch files and YAML may set only these
    "robot_config": "",  # the robot's hardware YAML (policy_node's robot_config), with a `serial:` section
    "port": "",  # the serial port, e.g. /dev/ttyUSB0 or `s2r hil --link` path
    "baud": 0,  # 0: the serial section's
    "rate_hz": 0.0,  # control ticks per second; 0: the board's control_rate_hz, or 100 Hz on a Dynamixel bus
    "command_timeout_s": 0.1,  # commands older than this: the servos' torque goes off / no COMMAND is sent
    "reconnect_period_s": 0.25,  # a failed link is reopened this often
    "failures_to_drop": 5,  # Dynamixel: this many failed state reads in a row mark the link down
    "usb_latency_s": 0.016,  # Dynamixel: the USB adapter's latency timer (answers are awaited 2 x this + 2 ms)
    "diagnostics_hz": 1.0,
    "frame_id": "base_link",
    **REALTIME_PARAMETERS,  # realtime_priority, cpu_affinity (run.py)
}
DEFAULT_DYNAMIXEL_RATE_HZ = 100.0
RTT_WINDOW = 1000
LOG_EVERY_S = 5.0  # the same link error is logged at most this often while retrying


def _quantile_ms(values, q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return 1e3 * s[min(len(s) - 1, int(q * len(s)))]


class _DynamixelLink:
    """DynamixelBus with the bridge's reconnects, torque handling and counters (one thread uses it)."""

    def __init__(self, node: SerialBridgeNode, serial_cfg, baud: int):
        from hardware.sim_plant import XM430_TORQUE_PER_CURRENT_NM_PER_A

        self.node = node
        self.servos = serial_cfg.servos()
        self.baud = baud
        self.nm_per_A = XM430_TORQUE_PER_CURRENT_NM_PER_A
        self.bus = None
        self.torque_on: bool | None = None  # None: unknown (just opened: open() turns it on)
        self.counts = dict(frames_in=0, frames_out=0, crc_errors=0, timeouts=0, failures=0, link_losses=0, reconnects=0)
        self.rtt_s: deque[float] = deque(maxlen=RTT_WINDOW)
        self._fails_in_row = 0
        self._ever_up = False

    @property
    def is_up(self) -> bool:
        return self.bus is not None

    def try_open(self) -> bool:
        from hardware.dynamixel_bus import DynamixelBus

        n = self.node
        bus = DynamixelBus(n.port, self.baud, self.servos, usb_latency_s=n.usb_latency_s)
        try:
            bus.open()  # checks every servo, holds the present pose, torque on
        except Exception as e:  # noqa: BLE001 - LinkError, ServoError, a port that fails while opening
            n.link_error(f"serial link on {n.port} ({self.baud} baud): {e}")
            bus.close()
            return False
        self.bus, self.torque_on, self._fails_in_row = bus, True, 0
        if self._ever_up:
            self.counts["reconnects"] += 1
        self._ever_up = True
        return True

    def _drop(self, why: str) -> None:
        self.counts["link_losses"] += 1
        self.node.get_logger().error(
            f"serial link on {self.node.port} lost: {why}; reopening every {self.node.reconnect_period_s:g} s"
        )
        try:
            self.bus.close()
        except Exception:  # noqa: BLE001 - the port is gone already
            pass
        self.bus = None

    def send(self, command) -> None:
        """A command with kp_scale > 0: one sync write of its goals, then torque on if it was off; no command,
        or kp_scale 0: torque off (once)."""

        def exchange(bus) -> None:
            if command is not None and command[1] > 0.0:
                try:
                    bus.write_goal(command[0])
                except ValueError as e:  # a goal the servos cannot take: hold the last one
                    self.node.get_logger().error(f"goal not sent: {e}", throttle_duration_sec=1.0)
                if not self.torque_on:
                    bus.torque_on()
                    self.torque_on = True
            elif self.torque_on is not False:
                bus.torque_off()  # the safe state: the servos' own damping
                self.torque_on = False

        self._exchange(exchange)

    def read(self) -> dict | None:
        """One sync read; the readings, or None."""
        start_s = time.perf_counter()
        state = self._exchange(lambda bus: bus.read_state())
        if state is None:
            return None
        self.rtt_s.append(time.perf_counter() - start_s)
        self._fails_in_row = 0
        return {
            "joint_pos": state.position_rad,
            "joint_vel": state.velocity_radps,
            "joint_effort": state.current_A * self.nm_per_A,
        }

    def _exchange(self, exchange: Callable):
        """`exchange(bus)`'s result, or None when it failed or the link is down: a port that fails drops the
        link at once, `failures_to_drop` failed exchanges in a row drop it too."""
        from hardware.dynamixel_bus import DynamixelError

        bus = self.bus
        if bus is None:  # dropped by the exchange before this one
            return None
        stats = bus.stats
        before = (stats.ok, stats.corrupt, stats.timeouts, stats.failures, stats.writes)
        try:
            return exchange(bus)
        except (serial.SerialException, OSError) as e:  # the port itself failed (a cable, an emulator gone)
            self._drop(f"{type(e).__name__}: {e}")
        except DynamixelError as e:
            self._fails_in_row += 1
            if self._fails_in_row >= self.node.failures_to_drop:
                self._drop(f"{self._fails_in_row} exchanges in a row failed, the last: {e}")
        finally:
            self._account(bus, before)
        return None

    def _account(self, bus, before) -> None:
        s = bus.stats
        ok, corrupt, timeouts, failures, writes = (
            a - b for a, b in zip((s.ok, s.corrupt, s.timeouts, s.failures, s.writes), before, strict=True)
        )
        c = self.counts
        c["frames_in"] += ok
        c["crc_errors"] += corrupt
        c["timeouts"] += timeouts
        c["failures"] += failures
        c["frames_out"] += writes

    def counters(self) -> dict:
        rtt = list(self.rtt_s)
        return {
            **self.counts,
            "rtt_samples": len(rtt),
            "rtt_p50_ms": _quantile_ms(rtt, 0.5),
            "rtt_p99_ms": _quantile_ms(rtt, 0.99),
        }

    def close(self) -> None:
        if self.bus is not None:
            try:
                self.bus.torque_off()
            except Exception:  # noqa: BLE001 - on the way out, a failed port is no news
                pass
            self.bus.close()
            self.bus = None


class _BoardLink:
    """BoardLink with the bridge's first-open retries and command mapping (one thread uses it)."""

    def __init__(self, node: SerialBridgeNode, serial_cfg, baud: int, robot):
        self.node = node
        self.cfg = serial_cfg
        self.baud = baud
        self.n = len(robot.actuator_names)
        self.kp = np.asarray(robot.joints.per_joint("kp"), dtype=np.float64)
        self.kd = np.asarray(robot.joints.per_joint("kd"), dtype=np.float64)
        self.link = None
        self._was_up = False
        self.link_losses = 0
        self._board_error_logged = None  # the last board ERROR put in the log

    @property
    def is_up(self) -> bool:
        return self.link is not None and self.link.is_up

    def try_open(self) -> bool:
        from hardware.board_link import BoardLink

        n = self.node
        link = BoardLink(n.port, self.baud, self.n, self.cfg.command_timeout_ms, self.cfg.control_rate_hz)
        try:
            link.open()
        except Exception as e:  # noqa: BLE001 - LinkError names the port and what to check
            n.link_error(f"serial link on {n.port} ({self.baud} baud): {e}")
            link.close()
            return False
        self.link, self._was_up = link, True
        return True

    def send(self, command) -> None:
        """One COMMAND; no command (none fresh): nothing, and the board's own timeout turns its outputs off."""
        from hardware.messages import Command, CommandMode

        if command is None or not self.is_up:
            return
        pos, kp_scale, kd = command
        kd = self.kd if kd is None else kd
        self.link.send_command(
            Command(
                mode=CommandMode.POSITION,
                targets=tuple(map(float, pos)),
                kp_Nm_per_rad=tuple(map(float, kp_scale * self.kp)),
                kd_Nms_per_rad=tuple(map(float, kd)),
            )
        )

    def read(self) -> dict | None:
        """The newest STATE the board streamed, or None."""
        link = self.link
        state = link.poll()  # never raises for the port: it reopens it itself
        up = link.is_up
        if self._was_up and not up:
            self.link_losses += 1
            self.node.get_logger().error(
                f"serial link on {self.node.port} lost: no STATE for {link.board_gone_s:g} s"
                f"{'; ' + link.last_port_error if link.last_port_error else ''}; reconnecting"
            )
        elif not up and link.last_port_error:
            self.node.link_error(link.last_port_error)
        elif up and not self._was_up:
            self.node.get_logger().info(f"serial link on {self.node.port} is back")
        self._was_up = up
        self._log_board_error(link)
        if state is None:
            return None
        r = {
            "joint_pos": np.asarray(state.position_rad),
            "joint_vel": np.asarray(state.velocity_rad_s),
            "joint_effort": np.asarray(state.effort_Nm),
        }
        if state.imu is not None:
            r["imu"] = state.imu
        return r

    def _log_board_error(self, link) -> None:
        """The board's newest ERROR (a command timeout that turned its outputs off, a refused COMMAND), in the
        log as it comes: the robot's own account of why it stopped. (The count is in the diagnostics.)"""
        err = link.last_board_error
        if err is not None and err is not self._board_error_logged:
            from hardware.board_link import describe_error

            self.node.get_logger().warning(f"board on {self.node.port}: {describe_error(err)}")
        self._board_error_logged = err

    def counters(self) -> dict:
        if self.link is None:
            return {"link_losses": self.link_losses}
        from hardware.board_link import describe_error

        c, last = self.link.counters, self.link.last_board_error
        return {
            "frames_in": c.frames_in,
            "frames_out": c.frames_out,
            "crc_errors": c.crc_errors,
            "framing_errors": c.framing_errors,
            "lost": c.lost,
            "timeouts": c.timeouts,
            "link_losses": self.link_losses,
            "reconnects": c.reconnects,
            "board_resets": c.board_resets,
            "board_errors": c.board_errors,
            "last_board_error": "" if last is None else describe_error(last),
            "rtt_samples": c.rtt_samples,
            "rtt_p50_ms": c.rtt_p50_ms,
            "rtt_p99_ms": c.rtt_p99_ms,
        }

    def close(self) -> None:
        if self.link is not None:
            self.link.close()  # the board's own command timeout turns its outputs off
            self.link = None


class SerialBridgeNode(Node):
    def __init__(self):
        super().__init__("serial_bridge_node")
        for name, default in PARAMETERS.items():
            self.declare_parameter(name, default)
        get = lambda name: self.get_parameter(name).value  # noqa: E731 a one-line local alias
        from hardware.serial_config import DynamixelSerialCfg, load_hardware_serial

        path = get("robot_config")
        if not path:
            raise ValueError("parameter robot_config is not set (the robot's hardware YAML, with a serial: section)")
        hw = load_hardware_serial(path)
        if hw.serial is None:
            raise ValueError(f"{path}: has no serial: section (hardware/serial_config.py); nothing to bridge")
        self.port = get("port")
        if not self.port:
            raise ValueError("parameter port is not set (e.g. /dev/ttyUSB0, or the path given to s2r hil --link)")
        baud = int(get("baud")) or hw.serial.baud
        self.robot = hw.robot
        self.joint_names = tuple(hw.robot.actuator_names)
        self.n = len(self.joint_names)
        self.command_timeout_ns = int(get("command_timeout_s") * 1e9)
        self.reconnect_period_s = float(get("reconnect_period_s"))
        self.failures_to_drop = max(1, int(get("failures_to_drop")))
        self.usb_latency_s = float(get("usb_latency_s"))
        self.frame_id = get("frame_id")
        if isinstance(hw.serial, DynamixelSerialCfg):
            self.bus = "dynamixel"
            self.link = _DynamixelLink(self, hw.serial, baud)
            rate_hz = float(get("rate_hz")) or DEFAULT_DYNAMIXEL_RATE_HZ
        else:
            if hw.robot.joints is None:
                raise ValueError(f"{path}: robot '{hw.robot.name}' has no joints; this bridge drives joint robots")
            self.bus = "motor_board"
            self.link = _BoardLink(self, hw.serial, baud, hw.robot)
            rate_hz = float(get("rate_hz")) or float(hw.serial.control_rate_hz)
        self.baud, self.rate_hz = baud, rate_hz
        self._lock = threading.Lock()
        self._command = None
        self._command_ns = 0
        self._command_count = 0
        self._new_command = threading.Event()  # wakes the link thread: a command is sent as it arrives
        self._sent_count = 0
        self._last_error = ""
        self._last_error_s = 0.0
        self.published = 0
        self._published_s: float | None = None  # when the last state went out; None: none since the link came up
        self.publish_gap_max_s = 0.0  # the longest the sensor topics went silent while the link was up
        self.realtime = "off"  # diagnostics: what go_realtime got

        qos = QoSPresetProfiles.SENSOR_DATA.value
        self.create_subscription(Float64MultiArray, "joint_commands", self._on_command, qos)
        self.joint_pub = self.create_publisher(JointState, "joint_states", qos)
        has_imu = self.bus == "motor_board" and bool(hw.robot.base_body)
        self.imu_pub = self.create_publisher(Imu, "imu", qos) if has_imu else None
        self.diag_pub = self.create_publisher(DiagnosticArray, "diagnostics", 10)
        hz = float(get("diagnostics_hz"))
        if hz > 0:
            self.create_timer(1.0 / hz, self._publish_diagnostics)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="serial_link", daemon=True)
        self.get_logger().info(f"{hw.robot.name}: {self.bus} on {self.port} at {baud} baud, {rate_hz:g} Hz")

    # --- ROS side ----------------------------------------------------------------------------------
    def _on_command(self, msg) -> None:
        try:
            command = m.read_command(msg, self.n, True)
        except m.MessageError as e:
            self.get_logger().error(str(e), throttle_duration_sec=1.0)
            return
        with self._lock:
            self._command, self._command_ns = command, time.perf_counter_ns()
            self._command_count += 1
        self._new_command.set()

    def link_error(self, text: str) -> None:
        """Log a link error: at once when it changes, else at most every LOG_EVERY_S."""
        now = time.monotonic()
        if text != self._last_error or now - self._last_error_s >= LOG_EVERY_S:
            self.get_logger().error(f"{text}; retrying every {self.reconnect_period_s:g} s")
            self._last_error, self._last_error_s = text, now

    def _publish(self, r: dict) -> None:
        stamp = self.get_clock().now().to_msg()
        imu = r.get("imu")
        if imu is not None and self.imu_pub is not None:
            msg = m.imu_msg(Imu(), imu.quat_wxyz, imu.gyro_rad_s)
            msg.linear_acceleration.x, msg.linear_acceleration.y, msg.linear_acceleration.z = (
                float(v) for v in imu.accel_m_s2
            )
            msg.linear_acceleration_covariance[0] = 0.0  # the board does report its accelerometer
            msg.header.stamp, msg.header.frame_id = stamp, self.frame_id
            self.imu_pub.publish(msg)
        msg = m.joint_state_msg(JointState(), self.joint_names, r["joint_pos"], r["joint_vel"], r["joint_effort"])
        msg.header.stamp = stamp
        self.joint_pub.publish(msg)  # last, as sim_robot_node does
        self.published += 1
        now = time.monotonic()
        if self._published_s is not None:
            self.publish_gap_max_s = max(self.publish_gap_max_s, now - self._published_s)
        self._published_s = now

    def _publish_diagnostics(self) -> None:
        try:
            self._diagnostics()
        except Exception as e:  # noqa: BLE001 - counters read while the link thread updates them: next time
            self.get_logger().warning(f"diagnostics skipped: {type(e).__name__}: {e}", throttle_duration_sec=5.0)

    def _diagnostics(self) -> None:
        up = self.link.is_up
        values = {
            "bus": self.bus,
            "port": self.port,
            "baud": self.baud,
            "link": "up" if up else "down",
            "rate_hz": f"{self.rate_hz:g}",
            "realtime": self.realtime,
            "commands_in": self._command_count,
            "published": self.published,
            "publish_gap_max_ms": f"{1e3 * self.publish_gap_max_s:.1f}",
            "last_error": self._last_error,
        }
        for k, v in self.link.counters().items():
            values[k] = f"{v:.3f}" if isinstance(v, float) else v
        status = DiagnosticStatus(
            level=DiagnosticStatus.OK if up else DiagnosticStatus.ERROR,
            name="s2r/serial_bridge_node",
            message="link up" if up else "link down",
            hardware_id=self.port,
        )
        status.values = [KeyValue(key=k, value=str(v)) for k, v in values.items()]
        msg = DiagnosticArray(status=[status])
        msg.header.stamp = self.get_clock().now().to_msg()
        self.diag_pub.publish(msg)

    # --- the link thread -----------------------------------------------------------------------------
    def _fresh_command(self):
        with self._lock:
            if self._command is None or time.perf_counter_ns() - self._command_ns > self.command_timeout_ns:
                return None, self._command_count
            return self._command, self._command_count

    def _loop(self) -> None:
        """Ticks on absolute deadlines; between them each new command is sent as it arrives. A link that is
        down is reopened every reconnect_period_s."""
        period_s = 1.0 / self.rate_hz
        deadline = time.monotonic()
        next_open_s = 0.0
        opened = False
        while not self._stop.is_set():
            deadline += period_s
            try:
                while (delay := deadline - time.monotonic()) > 0 and not self._stop.is_set():
                    if self._new_command.wait(delay):
                        self._new_command.clear()
                        if opened and self.link.is_up:
                            self._send()
                now = time.monotonic()
                if deadline < now - period_s:  # fell behind (a slow exchange, a busy machine): no burst
                    deadline = now
                if not opened or (self.bus == "dynamixel" and not self.link.is_up):
                    if now < next_open_s:
                        continue
                    next_open_s = now + self.reconnect_period_s
                    if not self.link.try_open():
                        continue
                    opened = True
                    self._published_s = None
                    self.get_logger().info(f"serial link on {self.port} is up")
                    self._last_error = ""
                    deadline = time.monotonic()
                self._send()  # a command gone stale: the safe state
                r = self.link.read()
                if r is not None:
                    self._publish(r)
            except Exception as e:  # noqa: BLE001 - the link thread must outlive anything a tick throws
                self.get_logger().error(f"link tick failed: {type(e).__name__}: {e}", throttle_duration_sec=1.0)

    def _send(self) -> None:
        """The command if it is new, or the safe state if none is fresh."""
        command, count = self._fresh_command()
        if command is None or count != self._sent_count:
            self.link.send(command)
            self._sent_count = count

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        self.link.close()


def _start(node: SerialBridgeNode) -> None:
    node.realtime = go_realtime(node)
    node._thread.start()


def main(args=None) -> int:
    return run("serial_bridge_node", SerialBridgeNode, _start, lambda node: node.close(), args)


if __name__ == "__main__":
    sys.exit(main())
