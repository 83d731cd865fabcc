import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import sim  # noqa: E402,F401  chooses MuJoCo's GL back end before any test module imports mujoco

# the ROS package's Python (nodes, process helpers), as colcon's install would put it on the path
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ros_ws" / "src" / "s2r_ros"))
