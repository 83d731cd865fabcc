"""Each topic's QoS, as two node parameters: `qos.<topic>.reliability` (reliable | best_effort) and
`qos.<topic>.depth` (messages kept), `~/name` topics as `qos.name.*`.

Why these defaults: a subscriber that asks for RELIABLE (the default of rclpy and rclcpp, and what a
ros2_control forward command controller asks for) receives nothing from a BEST_EFFORT publisher ("offering
incompatible QoS"), while a BEST_EFFORT subscriber receives from either. So commands and operator topics are
reliable, and sensor streams use the sensor-data profile, which a driver publishing reliable still feeds.
Every profile here keeps the newest `depth` messages and is volatile: reliability and depth are what differ.
"""

from __future__ import annotations

from dataclasses import dataclass

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

RELIABILITY = {"reliable": ReliabilityPolicy.RELIABLE, "best_effort": ReliabilityPolicy.BEST_EFFORT}


class QoSError(ValueError):
    """A QoS parameter that is not a reliability this node knows or not a queue depth."""


@dataclass(frozen=True)
class TopicQoS:
    reliability: str  # a key of RELIABILITY
    depth: int  # newest messages kept, >= 1


SENSOR_DATA = TopicQoS("best_effort", 5)  # rclpy's qos_profile_sensor_data: a late reading is worth nothing
DEFAULT = TopicQoS("reliable", 10)  # rclpy's default profile: what create_subscription(..., 10) asks for
COMMANDS = TopicQoS("reliable", 1)  # only the newest command matters: a lost one is superseded, never resent late
# the robot's topics between the robot (simulated or its driver) and policy_node: sensors and operator commands
ROBOT_TOPICS = {
    "joint_states": SENSOR_DATA,
    "imu": SENSOR_DATA,
    "odom": SENSOR_DATA,
    "cmd_vel": DEFAULT,
    "target": DEFAULT,
}


def declare_qos(node: Node, defaults: dict[str, TopicQoS]) -> dict[str, QoSProfile]:
    """Declares the QoS parameters of `defaults`' topics on `node`; -> each topic's profile. Raises one QoSError
    that names every bad parameter, before the node creates any publisher or subscription."""
    profiles, errors = {}, []
    for topic, default in defaults.items():
        key = f"qos.{topic.removeprefix('~/')}"
        reliability = node.declare_parameter(f"{key}.reliability", default.reliability).value
        depth = node.declare_parameter(f"{key}.depth", default.depth).value
        bad = len(errors)
        if reliability not in RELIABILITY:
            errors.append(f"parameter {key}.reliability: '{reliability}' is not one of {list(RELIABILITY)}")
        if depth < 1:
            errors.append(f"parameter {key}.depth: {depth} is not a queue depth (>= 1)")
        if len(errors) == bad:
            profiles[topic] = QoSProfile(
                history=HistoryPolicy.KEEP_LAST,
                depth=depth,
                reliability=RELIABILITY[reliability],
                durability=DurabilityPolicy.VOLATILE,
            )
    if errors:
        raise QoSError("; ".join(errors))
    return profiles
