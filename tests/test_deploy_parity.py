"""The robot side computes what training computed: deploy's signals from robot readings, through
ObsBuilder, onnxruntime and ActionMapper, give the training env's actions; and a deploy Controller
driving the simulated robot scores like `s2r eval`."""

import dataclasses

import numpy as np
import pytest
import torch

from deploy.control_loop import Controller, Mode
from deploy.obs_builder import ObsBuilder
from deploy.onnx_policy import OnnxPolicy
from deploy.robot_config import load_robot_config
from deploy.signals import make_signals, required_readings
from policies.export import export_checkpoint
from policies.runner import Runner, default_train_cfg
from sim.sim_robot import SimRobot, noise_free
from sim.tasks import default_cfg

TASKS = ("quadrotor-hover", "quadruped-walk", "arm-reach")
ROBOT_YAML = {"quadrotor-hover": "quadrotor", "quadruped-walk": "quadruped", "arm-reach": "arm"}
# every built-in robot with its task: the three the tasks were written for, and three added as configs only
ROBOTS = {
    "crazyflie": "quadrotor-hover",
    "f450": "quadrotor-hover",
    "go1": "quadruped-walk",
    "go2": "quadruped-walk",
    "ur5e": "arm-reach",
    "open_manipulator_x": "arm-reach",
}


def _train_briefly(tmp_path_factory, task: str, robot: str | None = None):
    run = tmp_path_factory.mktemp(robot or task)
    cfg = dataclasses.replace(default_train_cfg(task), num_envs=32, max_iterations=1, save_interval=1000)
    runner = Runner(cfg, default_cfg(task, robot), run)
    ckpt = runner.learn(progress=False)
    runner.env.close()
    return export_checkpoint(ckpt)[0]


@pytest.fixture(scope="module")
def policies(tmp_path_factory):
    """A briefly trained policy per task, exported to ONNX (parity needs a real network, not a good one)."""
    return {task: _train_briefly(tmp_path_factory, task) for task in TASKS}


@pytest.fixture(scope="module")
def robot_policies(tmp_path_factory, policies):
    """The same for every built-in robot (the task's own robots reuse `policies`)."""
    own = {default_cfg(task).robot: path for task, path in policies.items()}
    return {robot: own.get(robot) or _train_briefly(tmp_path_factory, task, robot) for robot, task in ROBOTS.items()}


@pytest.mark.parametrize("robot_name", list(ROBOTS))
def test_deploy_runtime_reproduces_the_training_envs_observations_and_actions(robot_name, robot_policies):
    task = ROBOTS[robot_name]
    policy = OnnxPolicy(robot_policies[robot_name])
    robot = SimRobot(task, noise_free(default_cfg(task, robot_name)), seed=3)
    env, spec = robot.env, robot.spec
    signals = make_signals(spec)
    builder = ObsBuilder(spec)
    obs_env = env._observations()["policy"].numpy()
    last_action = np.zeros((1, spec.action_dim), np.float32)
    worst_obs = worst_action = 0.0
    for _ in range(80):
        # the operator's reading as the policy observed it (a rate-limited command: the Controller's ramp,
        # tests/test_deploy_runtime.py)
        observed = {k: env.readings[k][0].double().numpy() for k in robot.operator()}
        frame = {k: v.reshape(1, -1).astype(np.float32) for k, v in signals({**robot.readings(), **observed}).items()}
        obs_dep = builder({**frame, "last_action": last_action})
        a_env, a_dep = policy(obs_env), policy(obs_dep)
        worst_obs = max(worst_obs, float(np.abs(obs_env - obs_dep).max()))
        worst_action = max(worst_action, float(np.abs(a_env - a_dep).max()))
        last_action = a_dep
        obs_env = env.step(torch.from_numpy(a_env))[0]["policy"].numpy()
        if env.episode_step[0] == 0:  # the episode ended (an untrained policy crashes): the robot restarts too
            builder.reset()
            last_action = np.zeros_like(last_action)
    assert worst_obs <= 1e-5 and worst_action <= 1e-5, (worst_obs, worst_action)
    robot.close()


def test_unknown_observation_terms_are_named():
    from deploy.spec import ObsTerm, SpecError

    robot = SimRobot("arm-reach")
    bad = dataclasses.replace(robot.spec, obs=robot.spec.obs + (ObsTerm("lidar", ("r",), (1.0,)),))
    with pytest.raises(SpecError, match="'lidar' has no robot-side signal"):
        required_readings(bad)
    robot.close()


@pytest.mark.parametrize("task", ["quadrotor-hover", "arm-reach"])
def test_controller_on_the_sim_robot_runs_and_records_episodes(task, policies):
    """The deploy Controller (soft start, safety guard, policy) drives the sim robot through episodes."""
    from pathlib import Path

    policy = OnnxPolicy(policies[task])
    cfg = load_robot_config(
        Path(__file__).parents[1] / "ros_ws/src/s2r_ros/config" / f"{ROBOT_YAML[task]}.yaml", policy.spec
    )
    cfg = dataclasses.replace(cfg, soft_start_s=0.0)
    robot = SimRobot(task, seed=1)
    ctl = Controller(cfg, policy.spec, policy, make_signals(policy.spec))
    period = cfg.period_ns
    t = 0
    stamps = lambda: {s: t for s in cfg.sensors}  # noqa: E731
    ctl.step(t, robot.readings(), stamps())
    ctl.arm(t)
    ctl.start()
    while len(robot.recorder.episodes) < 2:
        t += period
        cmd = ctl.step(t, {**robot.readings(), **robot.operator()}, stamps())
        assert cmd.mode in (Mode.STANDBY, Mode.RUNNING), cmd.fault
        robot.step(cmd.command, cmd.kp_scale, cmd.kd)
    summary = robot.recorder.summary()
    rates = [v for k, v in summary.items() if k.endswith("_rate")]
    assert rates and all(0.0 <= r <= 1.0 for r in rates), summary  # an untrained policy's errors may be NaN
    robot.close()
