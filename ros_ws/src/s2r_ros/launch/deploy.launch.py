"""ros2 launch s2r_ros deploy.launch.py robot:=quadruped policy:=/path/policy.onnx hardware:=sim

Starts policy_node for `robot` (config/<robot>.yaml is its hardware config, naming the robot config
whose joints, default pose and rate it runs with; config/<robot>_nodes.yaml its node parameters) and, with
hardware:=sim, sim_robot_node as the robot; with hardware:=real, the
robot's own driver must serve the topics (see the README); with hardware:=serial port:=/dev/ttyUSB0
[baud:=N], serial_bridge_node serves them from the robot's serial link (the `serial:` section of
config/<robot>.yaml says the bus; baud:=0, the default, keeps its baud rate). Simulated robots autostart; a real one
waits for `ros2 service call /policy_node/arm std_srvs/srv/Trigger` and `.../start`. record:=true also
starts the recorder, which writes the rollout into the rosbag2 bag folder `bag` (MCAP storage; empty:
rosbag2_<date>-<time> in the working directory) with the policy's PolicySpec and sha256 in its metadata.
"""

import os

from ament_index_python.packages import get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

HARDWARE = ("sim", "real", "serial")
NODES_SUFFIX = "_nodes.yaml"


def robots(config: str) -> list[str]:
    """The robots this package has configs for: config/<robot>.yaml and config/<robot>_nodes.yaml."""
    return sorted(f[: -len(NODES_SUFFIX)] for f in os.listdir(config) if f.endswith(NODES_SUFFIX))


def _nodes(context):
    robot = LaunchConfiguration("robot").perform(context)
    policy = LaunchConfiguration("policy").perform(context)
    hardware = LaunchConfiguration("hardware").perform(context)
    record = LaunchConfiguration("record").perform(context).lower()
    config = os.path.join(get_package_share_directory("s2r_ros"), "config")
    if robot not in robots(config):
        raise RuntimeError(f"robot:={robot} is not one of {robots(config)}")
    if hardware not in HARDWARE:
        raise RuntimeError(f"hardware:={hardware} is not one of {HARDWARE}")
    port = LaunchConfiguration("port").perform(context)
    baud = LaunchConfiguration("baud").perform(context)
    if hardware == "serial" and not port:
        raise RuntimeError("hardware:=serial needs port:=PATH (the robot's serial port)")
    if not baud.isdigit():
        raise RuntimeError(f"baud:={baud} is not a whole number (0: the hardware config's)")
    if record not in ("true", "false"):
        raise RuntimeError(f"record:={record} is not true or false")
    node_params = os.path.join(config, f"{robot}_nodes.yaml")
    params = {"robot_config": os.path.join(config, f"{robot}.yaml"), "policy": policy, "autostart": hardware == "sim"}
    nodes = [
        Node(
            package="s2r_ros",
            executable="policy_node",
            name="policy_node",
            output="screen",
            parameters=[node_params, params],
            # Fast DDS sends from the publishing thread instead of handing off to its own: lower latency
            additional_env={"RMW_FASTRTPS_PUBLICATION_MODE": "SYNCHRONOUS"},
        )
    ]
    if hardware == "sim":
        nodes.append(
            Node(
                package="s2r_ros",
                executable="sim_robot_node",
                name="sim_robot_node",
                output="screen",
                parameters=[node_params],
            )
        )
    if hardware == "serial":
        bridge = {"robot_config": params["robot_config"], "port": port, "baud": int(baud)}
        nodes.append(
            Node(
                package="s2r_ros",
                executable="serial_bridge_node",
                name="serial_bridge_node",
                output="screen",
                parameters=[node_params, bridge],
            )
        )
    if record == "true":
        bag = LaunchConfiguration("bag").perform(context)
        nodes.append(
            Node(
                package="s2r_ros",
                executable="recorder_node",
                name="recorder",
                output="screen",
                parameters=[{"bag": bag, "policy": policy}],
            )
        )
    return nodes


def generate_launch_description():
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "robot",
                description="a robot with configs in this package's config/ "
                "(quadrotor, quadruped, arm, f450, go2, open_manipulator_x)",
            ),
            DeclareLaunchArgument("policy", description="path to the exported policy.onnx"),
            DeclareLaunchArgument("hardware", default_value="sim", description=f"one of {HARDWARE}"),
            DeclareLaunchArgument("port", default_value="", description="hardware:=serial: the robot's serial port"),
            DeclareLaunchArgument(
                "baud",
                default_value="0",
                description="hardware:=serial: baud rate (0: the hardware config's serial.baud)",
            ),
            DeclareLaunchArgument("record", default_value="false", description="true: record the rollout into a bag"),
            DeclareLaunchArgument("bag", default_value="", description="bag folder to create (record:=true)"),
            OpaqueFunction(function=_nodes),
        ]
    )
