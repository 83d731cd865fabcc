"""`s2r robot check PATH`: a robot config against its model, and against the tasks for its kind, with
every problem at once; then a picture of the robot in its default pose, to look at before training."""

from __future__ import annotations

from pathlib import Path

import mujoco
import numpy as np

from config.robot import RobotConfigError, hover_thrust_to_weight
from config.validate import ConfigError, validate
from sim.backends.mujoco_cpu import load_model
from sim.robots import check_robot, edit_spec, find_robot, resolve
from sim.tasks import TASKS, default_cfg
from sim.video import offscreen_renderer


def task_problems(cfg) -> list[str]:
    """Problems of the robot's task_overrides: unknown tasks, fields or values."""
    problems = []
    for task in cfg.task_overrides:
        if task not in TASKS:
            problems.append(f"task_overrides.{task}: unknown task (tasks: {', '.join(sorted(TASKS))})")
        elif TASKS[task].kind != cfg.kind:
            problems.append(
                f"task_overrides.{task}: that task runs on {TASKS[task].kind} robots; this one is of kind '{cfg.kind}'"
            )
        else:
            try:
                validate(default_cfg(task, cfg.source), prefix=f"task_overrides.{task}.")
            except ConfigError as e:
                problems.append(str(e))
    return problems


def framing_camera(model: mujoco.MjModel, data: mujoco.MjData) -> mujoco.MjvCamera:
    """A camera that frames the robot's bodies (the world's own geoms, a floor, are left out)."""
    pos = data.xpos[1:]
    center = (pos.min(0) + pos.max(0)) / 2
    radius = max(float(np.linalg.norm(pos - center, axis=1).max()), 0.05)
    cam = mujoco.MjvCamera()
    cam.type = mujoco.mjtCamera.mjCAMERA_FREE
    cam.lookat[:] = center
    cam.distance = 3.5 * radius
    cam.elevation, cam.azimuth = -20.0, 135.0
    return cam


def check_and_render(name_or_path: str, png: str | None = None, width: int = 640, height: int = 480) -> list[str]:
    """Raise RobotConfigError listing every problem; else write the picture and return a report."""
    cfg = find_robot(name_or_path)
    problems = check_robot(cfg) + task_problems(cfg)
    if problems:
        raise RobotConfigError(cfg.source, problems)
    robot = resolve(cfg, load_model(cfg.model_path, edit_spec(cfg)))
    model = robot.model
    data = mujoco.MjData(model)
    data.qpos[:] = robot.home_qpos
    if robot.base_qadr >= 0 and cfg.kind == "multirotor":
        data.qpos[robot.base_qadr + 2] = max(data.qpos[robot.base_qadr + 2], 1.0)  # in the air
    mujoco.mj_forward(model, data)
    out = Path(png) if png else Path(cfg.source).with_suffix(".png")
    renderer = offscreen_renderer(model, width, height)
    renderer.update_scene(data, camera=framing_camera(model, data))
    from PIL import Image

    Image.fromarray(renderer.render()).save(out)
    renderer.close()
    lines = [
        f"{cfg.name}: {cfg.kind}, model {cfg.model_path}",
        f"  mass {robot.mass_kg:.4g} kg; physics {robot.physics_hz:g} Hz, "
        f"control {cfg.control_hz:g} Hz ({robot.decimation} physics steps per control step)",
    ]
    if cfg.joints is not None:
        assert robot.joint_low is not None and robot.joint_high is not None
        for name, q, lo, hi in zip(
            cfg.joints.names, cfg.joints.default_pos_rad, robot.joint_low, robot.joint_high, strict=True
        ):
            lines.append(f"  joint {name:24s} default {q:+.3f}  limits [{lo:+.3f}, {hi:+.3f}]")
    if cfg.rotors is not None:
        lines.append(
            f"  {len(cfg.rotors.names)} rotors, thrust-to-weight {hover_thrust_to_weight(cfg, robot.mass_kg):.2f}"
        )
    tasks = [t for t, entry in TASKS.items() if entry.kind == cfg.kind]
    lines.append(f"  tasks: {', '.join(tasks)}; picture of the default pose: {out}")
    if not np.isfinite(data.qacc).all():
        raise RobotConfigError(cfg.source, ["the model's accelerations at the default pose are not finite"])
    return lines
