"""Start s2r_ros nodes (tests, benchmarks) as separate processes with exactly the arguments ros2 launch gives them.

deploy.launch.py passes each node `--ros-args -r __node:=NAME --params-file config/<robot>_nodes.yaml`
and, for its dict of parameters, a second `--params-file` that launch_ros writes as `/**: ros__parameters`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

PKG = Path(__file__).resolve().parents[1]  # the s2r_ros package folder in the source tree
ROOT = PKG.parents[2]  # the s2r checkout
CONFIG = PKG / "config"
SHIPPED_POLICIES = PKG / "policies"  # <robot>.onnx, trained with the README's commands


def ros_env(domain_id: int) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(PKG), str(ROOT), env.get("PYTHONPATH", "")])
    env["ROS_DOMAIN_ID"] = str(domain_id)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env["RMW_IMPLEMENTATION"] = "rmw_fastrtps_cpp"
    env["RMW_FASTRTPS_PUBLICATION_MODE"] = "SYNCHRONOUS"  # as deploy.launch.py sets it for policy_node
    env["PYTHONUNBUFFERED"] = "1"
    return env


def launch_params(tmp_dir: Path, name: str, params: dict) -> Path:
    path = tmp_dir / f"launch_params_{name}.yaml"
    path.write_text(yaml.safe_dump({"/**": {"ros__parameters": params}}))
    return path


def start_node(
    executable: str, robot: str, tmp_dir: Path, domain_id: int, params: dict | None = None
) -> subprocess.Popen:
    args = [
        sys.executable,
        "-m",
        f"s2r_ros.{executable}",
        "--ros-args",
        "-r",
        f"__node:={executable}",
        "--params-file",
        str(CONFIG / f"{robot}_nodes.yaml"),
    ]
    if params:
        args += ["--params-file", str(launch_params(tmp_dir, executable, params))]
    log = open(tmp_dir / f"{executable}.log", "w")
    return subprocess.Popen(args, env=ros_env(domain_id), stdout=log, stderr=subprocess.STDOUT, cwd=tmp_dir)


def policy_params(robot: str, policy: Path, hardware: str = "sim", **extra) -> dict:
    """The dict deploy.launch.py gives policy_node."""
    params = {
        "robot_config": str(CONFIG / f"{robot}.yaml"),
        "policy": str(Path(policy).resolve()),
        "autostart": hardware == "sim",
    }
    return {**params, **extra}


def bridge_params(robot: str, port: str | Path, baud: int = 0, **extra) -> dict:
    """The dict deploy.launch.py gives serial_bridge_node with hardware:=serial."""
    return {"robot_config": str(CONFIG / f"{robot}.yaml"), "port": str(port), "baud": baud, **extra}


def start_hil(
    robot: str, link: Path, tmp_dir: Path, baud: int | None = None, log_name: str = "hil"
) -> subprocess.Popen:
    """`s2r hil --robot ROBOT --link LINK`: the MuJoCo robot behind its electronics on a pty, `link` pointing at
    it once it serves (its output, with its pacing every 5 s, in tmp_dir/<log_name>.log)."""
    args = [sys.executable, "-m", "s2r.cli", "hil", "--robot", robot, "--link", str(link), "--report-s", "5"]
    if baud:
        args += ["--baud", str(baud)]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    log = open(tmp_dir / f"{log_name}.log", "a")
    return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)


def stop(*procs: subprocess.Popen) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def wait_for(predicate, timeout_s: float, spin=None, what: str = "condition") -> None:
    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if spin is not None:
            spin()
        if predicate():
            return
        if spin is None:
            time.sleep(0.01)
    raise TimeoutError(f"timed out after {timeout_s} s waiting for {what}")
