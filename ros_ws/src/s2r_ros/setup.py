from glob import glob

from setuptools import setup

package_name = "s2r_ros"

setup(
    name=package_name,
    version="0.1.0",
    packages=[package_name],
    data_files=[
        ("share/ament_index/resource_index/packages", ["resource/" + package_name]),
        ("share/" + package_name, ["package.xml"]),
        ("share/" + package_name + "/launch", glob("launch/*.launch.py")),
        ("share/" + package_name + "/config", glob("config/*.yaml")),
        # the shipped policies and their PolicySpec JSON: `policy:=<name>` in deploy.launch.py finds them here
        ("share/" + package_name + "/policies", glob("policies/*.onnx") + glob("policies/*.json")),
    ],
    install_requires=["setuptools"],
    zip_safe=True,
    description="ROS 2 nodes for s2r policies",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "policy_node = s2r_ros.policy_node:main",
            "sim_robot_node = s2r_ros.sim_robot_node:main",
            "serial_bridge_node = s2r_ros.serial_bridge_node:main",
            "recorder_node = s2r_ros.recorder_node:main",
        ],
    },
)
