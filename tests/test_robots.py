"""Robot configs (config/robot.py, sim/robots.py): every built-in robot checks out against its model, and
every mistake a user can make in a config is named, all of them in one error, before anything is built."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from config.robot import RobotConfigError, load_robot_cfg
from sim.robots import ROBOTS_DIR, UnknownRobotError, check_robot, find_robot, robot_names
from sim.tasks import TASKS, default_cfg, make_env

GO1 = yaml.safe_load((ROBOTS_DIR / "go1.yaml").read_text())


def write_robot(tmp_path: Path, d: dict, name: str = "robot.yaml") -> Path:
    """A user's robot YAML in tmp_path, its model path pointing into sim/robots."""
    d = dict(d)
    if not Path(d.get("model", "x")).is_absolute():
        d["model"] = str(ROBOTS_DIR / d["model"])
    path = tmp_path / name
    path.write_text(yaml.safe_dump(d))
    return path


@pytest.mark.parametrize("name", robot_names())
def test_every_builtin_robot_checks_out_and_builds_its_task(name):
    cfg = find_robot(name)
    assert check_robot(cfg) == []
    task = next(t for t, entry in TASKS.items() if entry.kind == cfg.kind)
    env = make_env(task, 2, default_cfg(task, name))
    assert env.spec.robot == cfg.name
    assert env.spec.action.names == cfg.actuator_names  # the wire order is the config's
    assert env.spec.control_hz == cfg.control_hz
    env.close()


def test_many_mistakes_are_reported_together_naming_each_item(tmp_path):
    bad = {**GO1, "base_body": "torso", "control_hz": 30.0, "mass_kg": 20.0}
    bad["joints"] = {
        **GO1["joints"],
        "names": ["FR_hip"] + GO1["joints"]["names"][1:],
        "default_pos_rad": [-0.1, 5.0] + GO1["joints"]["default_pos_rad"][2:],
    }
    bad["feet"] = {"names": ["FR", "FL", "RR", "RL"], "geoms": ["FR_foot", "FL_foot", "RR_foot", "RL_toe"]}
    del bad["mirror"]  # it names FR_hip_joint: the config alone would be refused first (test_symmetry.py)
    with pytest.raises(RobotConfigError) as e:
        make_env("quadruped-walk", 2, default_cfg("quadruped-walk", str(write_robot(tmp_path, bad))))
    problems = e.value.problems
    text = str(e.value)
    for expected in (
        "base_body: the model has no body 'torso'",
        "joints.names[0]: the model has no joint 'FR_hip'",
        "joints.default_pos_rad[1]: FR_thigh_joint at 5 is outside its limits",
        "feet.geoms[3]: the model has no geom 'RL_toe'",
        "control_hz: its period",
        "mass_kg: config says 20.0 kg, the model weighs 12.72 kg",
    ):
        assert expected in text, text
    assert len(problems) == 6, problems


def test_config_mistakes_are_reported_together(tmp_path):
    bad = {**GO1, "kind": "hexapod", "gains": 3}
    bad["joints"] = {**GO1["joints"], "kp": [1.0, 2.0, 3.0], "kd": "soft"}
    with pytest.raises(RobotConfigError) as e:
        load_robot_cfg(write_robot(tmp_path, bad))
    text = str(e.value)
    for expected in (
        "gains: unknown field",
        "joints.kd[0]: expected a number, got 'soft'",
        "joints.kp: 3 values for 12 joints",
        "kind: 'hexapod' is not one of",
    ):
        assert expected in text, text


def test_a_model_that_does_not_compile_or_lacks_a_mesh_is_named(tmp_path):
    broken = tmp_path / "broken.xml"
    broken.write_text("<mujoco><worldbody><body><joint/></body></worldbody></mujoco>")
    with pytest.raises(RobotConfigError, match="does not compile"):
        make_env(
            "quadruped-walk",
            2,
            default_cfg("quadruped-walk", str(write_robot(tmp_path, {**GO1, "model": str(broken)}))),
        )
    mesh = tmp_path / "mesh.xml"
    mesh.write_text(
        '<mujoco><asset><mesh name="m" file="trunk.stl"/></asset><worldbody><body name="trunk">'
        '<freejoint/><geom type="mesh" mesh="m"/></body></worldbody></mujoco>'
    )
    with pytest.raises(RobotConfigError, match="trunk.stl"):
        make_env(
            "quadruped-walk", 2, default_cfg("quadruped-walk", str(write_robot(tmp_path, {**GO1, "model": str(mesh)})))
        )
    missing = write_robot(tmp_path, {**GO1, "model": str(tmp_path / "nope.xml")})
    with pytest.raises(RobotConfigError, match="model file not found"):
        make_env("quadruped-walk", 2, default_cfg("quadruped-walk", str(missing)))


def test_rotors_that_cannot_lift_the_robot_are_refused(tmp_path):
    cf = yaml.safe_load((ROBOTS_DIR / "crazyflie.yaml").read_text())
    cf["rotors"] = {**cf["rotors"], "max_thrust_N": 0.08}
    with pytest.raises(RobotConfigError, match=r"4 x 0.08 N lifts 1.21x the model's weight .* at least 1.5x"):
        make_env("quadrotor-hover", 2, default_cfg("quadrotor-hover", str(write_robot(tmp_path, cf))))


def test_a_task_on_the_wrong_kind_of_robot_is_refused():
    with pytest.raises(RobotConfigError, match="the task needs a legged robot; 'ur5e' is of kind 'arm'"):
        make_env("quadruped-walk", 2, default_cfg("quadruped-walk", "ur5e"))
    with pytest.raises(UnknownRobotError, match="unknown robot 'go7'; built-in robots: .*go1"):
        default_cfg("quadruped-walk", "go7")


def test_robot_check_cli_writes_a_picture_or_lists_the_problems(tmp_path):
    png = tmp_path / "go1.png"
    ok = subprocess.run(
        [sys.executable, "-m", "s2r.cli", "robot", "check", "go1", "--png", str(png)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert ok.returncode == 0, ok.stderr
    assert png.stat().st_size > 10_000 and "quadruped-walk" in ok.stdout
    bad = write_robot(tmp_path, {**GO1, "base_body": "torso", "floor_geom": "ground"})
    fail = subprocess.run(
        [sys.executable, "-m", "s2r.cli", "robot", "check", str(bad)], capture_output=True, text=True, timeout=120
    )
    assert fail.returncode == 2
    assert "2 problem(s)" in fail.stderr and "'torso'" in fail.stderr and "'ground'" in fail.stderr


def test_added_actuators_ignore_the_models_own_actuator_defaults(tmp_path):
    """A user's MJCF may give all its actuators a force range or a gear in its default class; the drives
    and rotors the simulation adds must not inherit them (each term would be clamped on its own)."""
    from sim.robots import robot_model

    xml = (
        (ROBOTS_DIR / "go1.xml")
        .read_text()
        .replace('<motor gear="1" ctrllimited="true"/>', '<motor gear="2" ctrllimited="true" forcerange="-1 1"/>')
    )
    (tmp_path / "go1_defaults.xml").write_text(xml)
    robot = robot_model(find_robot(str(write_robot(tmp_path, {**GO1, "model": str(tmp_path / "go1_defaults.xml")}))))
    m = robot.model
    assert not m.actuator_forcelimited[robot.drive_ctrl].any()
    assert (m.actuator_gear[robot.drive_ctrl, 0] == 1).all()


def test_train_on_the_wrong_robot_stops_before_anything_trains(tmp_path):
    run = tmp_path / "run"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "s2r.cli",
            "train",
            "--task",
            "quadruped-walk",
            "--robot",
            "ur5e",
            "--run-dir",
            str(run),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "the task needs a legged robot; 'ur5e' is of kind 'arm'" in r.stderr, r.stderr
    assert not (run / "model_last.pt").exists()
    r = subprocess.run(
        [sys.executable, "-m", "s2r.cli", "train", "--task", "quadruped-walk", "--robot", "go7"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "unknown robot 'go7'" in r.stderr, r.stderr


@pytest.mark.parametrize("name", ["crazyflie", "f450"])
def test_replay_steps_a_multirotor_with_its_configured_rotors(name):
    """replay's dynamics gap compiles the robot as training does: the rotors from the config, so a robot
    whose MJCF has only rotor sites (f450) replays too."""
    from replay.gap_pass import quadrotor_plant

    cfg = find_robot(name)
    model = quadrotor_plant(default_cfg("quadrotor-hover", name)).model()
    assert model.nu == len(cfg.rotors.names)
    assert sorted(abs(model.actuator_gear[:, 5])) == [cfg.rotors.torque_per_thrust_m] * model.nu
