"""ros2 launch s2r_ros deploy.launch.py robot:=quadruped policy:=quadruped hardware:=sim

Starts policy_node for `robot` (config/<robot>.yaml is its hardware config, naming the robot config
whose joints, default pose and rate it runs with; config/<robot>_nodes.yaml its node parameters) and, with
hardware:=sim, sim_robot_node as the robot; with hardware:=real, the
robot's own driver must serve the topics (see the README); with hardware:=serial port:=/dev/ttyUSB0
[baud:=N], serial_bridge_node serves them from the robot's serial link (the `serial:` section of
config/<robot>.yaml says the bus; baud:=0, the default, keeps its baud rate). Simulated robots autostart; a real one
waits for `ros2 service call /policy_node/arm std_srvs/srv/Trigger` and `.../start`. record:=true also
starts the recorder, which writes the rollout into the rosbag2 bag folder `bag` (MCAP storage; empty:
rosbag2_<date>-<time> in the working directory) with the policy's PolicySpec and sha256 in its metadata.
`policy` is a path to an exported policy.onnx, or the name of one shipped with this package (policies/<name>.onnx);
a missing file is named before anything starts. When policy_node exits (it refuses a policy that does not fit the
robot, or a file that is not a readable ONNX), the launch shuts down with the reason and `ros2 launch` exits 1.
hardware:=sim keeps discovery on this machine, so a simulation never meets a real robot's nodes on the network.
"""

import os

from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable, Shutdown
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

HARDWARE = ("sim", "real", "serial")
NODES_SUFFIX = "_nodes.yaml"


def share() -> str:
    """The installed package's share folder; the source tree when the package is not installed (a launch file run
    by path from a checkout)."""
    try:
        return get_package_share_directory("s2r_ros")
    except PackageNotFoundError:
        return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def policy_path(policy: str, share_dir: str) -> str:
    """`policy` as given when it is a path, else the shipped policies/<policy>.onnx; a missing file is named here."""
    shipped = os.path.join(share_dir, "policies")
    path = policy if os.sep in policy or policy.endswith(".onnx") else os.path.join(shipped, f"{policy}.onnx")
    if not os.path.isfile(path):
        names = sorted(f[: -len(".onnx")] for f in os.listdir(shipped) if f.endswith(".onnx"))
        raise RuntimeError(f"policy:={policy}: {path} is not a file (shipped policies: {names})")
    return os.path.abspath(path)


def on_policy_exit(event, context):
    """policy_node gone means nothing controls the robot: shut the launch down with its reason. Raising is how a
    launch reports an error: LaunchService shuts down with the message and `ros2 launch` exits 1."""
    if context.is_shutdown:  # stopped by the launch itself (Ctrl-C)
        return None
    reason = f"policy_node exited with code {event.returncode}"
    if event.returncode == 2:  # run.py's exit code for a refusal to start
        raise RuntimeError(f"{reason}: it refused to start, for the reason it printed above")
    if event.returncode != 0:
        raise RuntimeError(reason)
    return [Shutdown(reason=reason)]


def robots(config: str) -> list[str]:
    """The robots this package has configs for: config/<robot>.yaml and config/<robot>_nodes.yaml."""
    return sorted(f[: -len(NODES_SUFFIX)] for f in os.listdir(config) if f.endswith(NODES_SUFFIX))


def _actions(context):
    robot = LaunchConfiguration("robot").perform(context)
    policy = LaunchConfiguration("policy").perform(context)
    hardware = LaunchConfiguration("hardware").perform(context)
    record = LaunchConfiguration("record").perform(context).lower()
    share_dir = share()
    config = os.path.join(share_dir, "config")
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
    policy = policy_path(policy, share_dir)
    node_params = os.path.join(config, f"{robot}_nodes.yaml")
    params = {"robot_config": os.path.join(config, f"{robot}.yaml"), "policy": policy, "autostart": hardware == "sim"}
    actions = []
    if hardware == "sim":  # discovery on this machine only: Jazzy and later read the first, Humble the second
        humble = os.environ.get("ROS_DISTRO") == "humble"
        actions.append(
            SetEnvironmentVariable("ROS_LOCALHOST_ONLY", "1")
            if humble
            else SetEnvironmentVariable("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
        )
    actions.append(
        Node(
            package="s2r_ros",
            executable="policy_node",
            name="policy_node",
            output="screen",
            parameters=[node_params, params],
            # Fast DDS sends from the publishing thread instead of handing off to its own: lower latency
            additional_env={"RMW_FASTRTPS_PUBLICATION_MODE": "SYNCHRONOUS"},
            on_exit=on_policy_exit,
        )
    )
    if hardware == "sim":
        actions.append(
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
        actions.append(
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
        actions.append(
            Node(
                package="s2r_ros",
                executable="recorder_node",
                name="recorder",
                output="screen",
                parameters=[{"bag": bag, "policy": policy}],
            )
        )
    return actions


def generate_launch_description():
    return LaunchDescription(
        [
            DeclareLaunchArgument(
                "robot",
                description="a robot with configs in this package's config/ "
                "(quadrotor, quadruped, arm, f450, go2, open_manipulator_x)",
            ),
            DeclareLaunchArgument(
                "policy",
                description="path to the exported policy.onnx, or a shipped policy's name (quadruped, arm, ...)",
            ),
            DeclareLaunchArgument("hardware", default_value="sim", description=f"one of {HARDWARE}"),
            DeclareLaunchArgument("port", default_value="", description="hardware:=serial: the robot's serial port"),
            DeclareLaunchArgument(
                "baud",
                default_value="0",
                description="hardware:=serial: baud rate (0: the hardware config's serial.baud)",
            ),
            DeclareLaunchArgument("record", default_value="false", description="true: record the rollout into a bag"),
            DeclareLaunchArgument("bag", default_value="", description="bag folder to create (record:=true)"),
            OpaqueFunction(function=_actions),
        ]
    )
