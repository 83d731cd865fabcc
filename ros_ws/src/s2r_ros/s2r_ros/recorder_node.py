"""recorder: writes a rollout's topics into a rosbag2 bag in MCAP storage (replay/bag.py), as
`ros2 bag record -s mcap` would, with the policy's PolicySpec and sha256 as the bag's custom data.

Messages are taken raw (CDR bytes, never deserialized) and written at their receive time. A topic
whose type is not yet known is subscribed once a publisher appears (the graph is polled). The bag is
flushed at least every `flush_period_s`, so a recorder killed with SIGKILL leaves a bag that reads up
to that point; on SIGINT/SIGTERM it is closed with its index and final metadata.yaml.
"""

from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

from deploy.onnx_policy import file_sha256, read_spec
from replay.bag import BagWriter
from s2r_ros.run import run

TOPICS = [  # relative names, resolved in the node's namespace as policy_node resolves them
    "joint_states",
    "imu",
    "odom",  # sensors
    "joint_commands",
    "motor_thrust",  # commands (a robot has one of the two)
    "policy_io",
    "diagnostics",
    "estop",
    "cmd_vel",
    "target",
]
PARAMETERS = {  # name: default
    "bag": "",  # output folder; must not exist. Empty: rosbag2_<date>-<time> in the working directory
    "policy": "",  # path to the policy.onnx being run: its PolicySpec and sha256 go into the bag
    "topics": TOPICS,
    "discovery_period_s": 0.5,  # how often the graph is polled for topics not yet subscribed
    "flush_period_s": 0.5,  # longest time a message waits in memory (lost on SIGKILL)
    "depth": 100,  # subscription queue per topic
}


def policy_metadata(policy: str) -> dict[str, str]:
    """The bag's custom data for a policy file: what replay needs to rebuild observations and actions."""
    path = Path(policy).resolve()
    return {"policy_spec": read_spec(path).to_json(), "policy_sha256": file_sha256(path), "policy_path": str(path)}


def message_class(msgtype: str):
    """`pkg/msg/Type` -> its Python class; raw subscriptions still need it for the type support."""
    pkg, _, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{pkg}.msg"), name)


def offered_qos(node: Node, topic: str) -> tuple[list[dict], ReliabilityPolicy]:
    """The publishers' QoS in rosbag2's form, and the reliability that matches all of them."""
    profiles, reliable = [], True
    for info in node.get_publishers_info_by_topic(topic):
        q = info.qos_profile
        reliable &= q.reliability == ReliabilityPolicy.RELIABLE
        duration = lambda d: {"sec": d.nanoseconds // 10**9, "nsec": d.nanoseconds % 10**9}  # noqa: E731 a local alias
        profiles.append(
            {
                "history": q.history.name.lower(),
                "depth": q.depth,
                "reliability": q.reliability.name.lower(),
                "durability": q.durability.name.lower(),
                "deadline": duration(q.deadline),
                "lifespan": duration(q.lifespan),
                "liveliness": q.liveliness.name.lower(),
                "liveliness_lease_duration": duration(q.liveliness_lease_duration),
                "avoid_ros_namespace_conventions": q.avoid_ros_namespace_conventions,
            }
        )
    return profiles, ReliabilityPolicy.RELIABLE if reliable else ReliabilityPolicy.BEST_EFFORT


class RecorderNode(Node):
    def __init__(self, **overrides):
        super().__init__("recorder", **overrides)
        for name, default in PARAMETERS.items():
            self.declare_parameter(name, default)
        get = lambda name: self.get_parameter(name).value  # noqa: E731 a one-line local alias
        bag = get("bag") or time.strftime("rosbag2_%Y_%m_%d-%H_%M_%S")
        metadata = policy_metadata(get("policy")) if get("policy") else {}
        self.wanted = {self.resolve_topic_name(t) for t in get("topics")}
        self.depth = int(get("depth"))
        self.bag = BagWriter(bag, metadata, flush_period_s=float(get("flush_period_s")))  # refuses an existing folder
        self.subscribed: dict[str, str] = {}  # topic -> type
        self._skipped: set[str] = set()
        self.create_timer(float(get("discovery_period_s")), self._discover)
        self.create_timer(float(get("flush_period_s")), self.bag.flush)
        self._discover()
        what = f"policy sha256 {metadata['policy_sha256'][:12]}" if metadata else "no policy"
        self.get_logger().info(f"recording {sorted(self.wanted)} into {self.bag.path} ({what})")

    def _discover(self) -> None:
        for topic, types in self.get_topic_names_and_types():
            if topic not in self.wanted or topic in self.subscribed or topic in self._skipped:
                continue
            if not self.get_publishers_info_by_topic(
                topic
            ):  # only subscribers so far: their QoS is not the publishers'
                continue
            msgtype = types[0]
            if len(types) > 1:
                self.get_logger().warning(f"{topic} has several types {types}: recording it as {msgtype}")
            try:
                cls = message_class(msgtype)
            except (ImportError, AttributeError, ValueError) as e:
                self._skipped.add(topic)
                self.get_logger().error(f"not recording {topic}: its type {msgtype} is not installed here ({e})")
                continue
            qos_profiles, reliability = offered_qos(self, topic)
            self.bag.add_topic(topic, msgtype, qos_profiles)
            qos = QoSProfile(
                history=HistoryPolicy.KEEP_LAST,
                depth=self.depth,
                reliability=reliability,
                durability=DurabilityPolicy.VOLATILE,
            )
            self.create_subscription(cls, topic, self._writer(topic, msgtype), qos, raw=True)
            self.subscribed[topic] = msgtype
            self.get_logger().info(f"recording {topic} ({msgtype}, {reliability.name.lower()})")

    def _writer(self, topic: str, msgtype: str):
        def write(cdr: bytes) -> None:
            self.bag.write(topic, msgtype, cdr, time.time_ns())

        return write

    def close(self) -> None:
        self.bag.close()
        self.get_logger().info(f"bag {self.bag.path} closed: {self.bag.message_count} messages {self.bag.counts}")


def main(args=None) -> int:
    return run("recorder", RecorderNode, stop=lambda node: node.close(), args=args)


if __name__ == "__main__":
    sys.exit(main())
