"""deploy.launch.py and the s2r_ros package as colcon installs it. `launch` and `launch_ros` are not installable
here, so the launch file is read (its AST), and its helpers that need neither run as written, with the real
ament_index_python, against the package installed by its own setup.py."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

pytest.importorskip("ament_index_python")  # installed with the ROS 2 wheels by setup.sh ('.[ros]')

from s2r_ros.processes import PKG, SHIPPED_POLICIES  # noqa: E402

LAUNCH = PKG / "launch" / "deploy.launch.py"
S2R_PACKAGES = {"s2r", "s2r_ros", "config", "deploy", "sim", "policies", "hardware", "replay"}  # pip-installed s2r
ROSDEP_KEYS = {"numpy": "python3-numpy", "yaml": "python3-yaml", "serial": "python3-serial"}


def calls(tree: ast.AST, name: str) -> list[ast.Call]:
    return [c for c in ast.walk(tree) if isinstance(c, ast.Call) and getattr(c.func, "id", None) == name]


def keyword(call: ast.Call, name: str) -> ast.expr:
    return next(k.value for k in call.keywords if k.arg == name)


def launch_helpers(path: Path) -> dict:
    """The launch file's module-level code without its launch / launch_ros imports: its functions that use neither
    run as written."""
    tree = ast.parse(path.read_text())
    tree.body = [
        s
        for s in tree.body
        if not (isinstance(s, ast.ImportFrom) and (s.module or "").split(".")[0] in ("launch", "launch_ros"))
    ]
    namespace = {"__file__": str(path), "__name__": "deploy_launch"}
    exec(compile(tree, str(path), "exec"), namespace)
    return namespace


def test_policy_node_exiting_shuts_the_launch_down_with_its_reason_and_an_error():
    tree = ast.parse(LAUNCH.read_text())
    [node] = [c for c in calls(tree, "Node") if keyword(c, "executable").value == "policy_node"]  # type: ignore[attr-defined]
    handler = keyword(node, "on_exit")
    assert isinstance(handler, ast.Name), "policy_node's Node has no on_exit handler"
    [fn] = [f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name == handler.id]
    # a clean exit emits Shutdown(reason=...); a non-zero one raises, which launch turns into a shutdown with the
    # message as its reason and a return code of 1 (LaunchService.run_async)
    [shutdown] = calls(fn, "Shutdown")
    assert [k.arg for k in shutdown.keywords] == ["reason"]
    assert any(isinstance(s, ast.Raise) for s in ast.walk(fn))
    assert "returncode" in ast.unparse(fn) and "is_shutdown" in ast.unparse(fn)


def test_a_simulation_keeps_discovery_on_this_machine():
    tree = ast.parse(LAUNCH.read_text())
    sim_blocks = [b for b in ast.walk(tree) if isinstance(b, ast.If) and ast.unparse(b.test) == "hardware == 'sim'"]
    set_env = {
        (c.args[0].value, c.args[1].value)  # type: ignore[attr-defined]
        for b in sim_blocks
        for c in calls(b, "SetEnvironmentVariable")
    }
    assert set_env == {("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST"), ("ROS_LOCALHOST_ONLY", "1")}
    assert len(calls(tree, "SetEnvironmentVariable")) == 2  # only under hardware == 'sim'


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """s2r_ros installed by its setup.py into a prefix (as colcon's ament_python build does); -> the prefix."""
    tmp = tmp_path_factory.mktemp("s2r_ros_install")
    source = tmp / "src"
    shutil.copytree(PKG, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    prefix = tmp / "install"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-index"]
        + ["--prefix", str(prefix), str(source)],
        check=True,
    )
    return prefix


def test_shipped_policies_are_installed_and_found_by_name(installed, monkeypatch):
    share = installed / "share" / "s2r_ros"
    shipped = sorted(p.name for p in SHIPPED_POLICIES.iterdir() if p.suffix in (".onnx", ".json"))
    assert sorted(p.name for p in (share / "policies").iterdir()) == shipped
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(installed))
    launch = launch_helpers(share / "launch" / "deploy.launch.py")
    assert launch["share"]() == str(share)
    assert launch["policy_path"]("quadruped", launch["share"]()) == str(share / "policies" / "quadruped.onnx")
    path = SHIPPED_POLICIES / "arm.onnx"  # a path is taken as it is
    assert launch["policy_path"](str(path), launch["share"]()) == str(path)
    with pytest.raises(RuntimeError, match=r"policy:=quadrupde: .* is not a file \(shipped policies: \['arm', "):
        launch["policy_path"]("quadrupde", launch["share"]())


def test_the_launch_file_run_from_a_checkout_finds_the_source_tree(tmp_path, monkeypatch):
    monkeypatch.setenv("AMENT_PREFIX_PATH", str(tmp_path))  # an ament prefix without s2r_ros
    launch = launch_helpers(LAUNCH)
    assert launch["share"]() == str(PKG)
    assert launch["policy_path"]("arm", str(PKG)) == str(SHIPPED_POLICIES / "arm.onnx")


def test_package_xml_lists_what_the_nodes_and_the_launch_file_import():
    modules = set()
    for path in [*PKG.glob("s2r_ros/*.py"), LAUNCH]:
        for a in ast.walk(ast.parse(path.read_text())):
            if isinstance(a, ast.Import):
                modules |= {n.name.split(".")[0] for n in a.names}
            elif isinstance(a, ast.ImportFrom) and a.level == 0:
                modules.add((a.module or "").split(".")[0])
    needed = {ROSDEP_KEYS.get(m, m) for m in modules - set(sys.stdlib_module_names) - S2R_PACKAGES}
    depends = {e.text for e in ET.parse(PKG / "package.xml").getroot().iter("exec_depend")}
    assert needed <= depends, needed - depends
    assert {"rclpy", "launch", "launch_ros", "ament_index_python", "python3-numpy"} <= needed
