"""Robots: a RobotCfg and its MJCF, checked together, and compiled with what every task adds to a robot.

`find_robot` takes a built-in name (sim/robots/NAME.yaml) or a path to a user's YAML. `check_robot`
lists every problem of the config against its model at once. `robot_model` compiles the model with
the pieces the tasks drive and read, built from the config rather than expected in the file:
- multirotor: one thrust actuator per rotor site (gear: thrust along the site's z, yaw reaction torque),
  replacing any actuator the model has on that site;
- joint robots: each configured joint's drive (sim.actuators.add_joint_drives), replacing the model's
  own actuator on that joint (a torque motor or a servo's position actuator: the drive is the PD law
  either way, with the config's gains and effort limit);
- legged: a touch sensor around each foot geom, and a floor if the model has none;
- arm: end-effector position and orientation sensors, and a payload body if the config names none.
The resolved ids are in `RobotModel`, so no task looks a name up itself.
"""

from __future__ import annotations

from dataclasses import dataclass

import mujoco
import numpy as np

from config.robot import BUILTIN_ROBOTS_DIR as ROBOTS_DIR
from config.robot import (
    MIN_THRUST_TO_WEIGHT,
    RobotCfg,
    RobotConfigError,
    UnknownRobotError,
    find_robot,
    hover_thrust_to_weight,
    robot_names,
)
from sim.actuators import PLAIN_ACTUATOR, add_joint_drives
from sim.backends.mujoco_cpu import ModelError, free_joint, load_model

__all__ = ["ROBOTS_DIR", "RobotModel", "UnknownRobotError", "check_robot", "find_robot", "robot_model", "robot_names"]
MASS_TOL = 0.02
FOOT_TOUCH_MARGIN = 1.3  # touch-sensor site radius / foot sphere radius
PAYLOAD_NOMINAL_KG = 0.01
PAYLOAD_RADIUS_M = 0.02
_OBJ = mujoco.mjtObj


def _named(model: mujoco.MjModel, obj, name: str) -> int:
    return mujoco.mj_name2id(model, obj, name) if name else -1


def _names(model: mujoco.MjModel, obj, count: int) -> str:
    found = [mujoco.mj_id2name(model, obj, i) for i in range(count)]
    return ", ".join(n for n in found if n) or "none"


def check_robot(cfg: RobotCfg, kind: str | None = None) -> list[str]:
    """Every problem of `cfg` against its model (and, given `kind`, against what a task needs)."""
    problems: list[str] = []
    if kind is not None and cfg.kind != kind:
        problems.append(f"kind: the task needs a {kind} robot; '{cfg.name}' is of kind '{cfg.kind}'")
    try:
        model = load_model(cfg.model_path)
    except ModelError as e:
        return problems + [f"model: {e}"]
    has = {
        "body": (_OBJ.mjOBJ_BODY, model.nbody),
        "joint": (_OBJ.mjOBJ_JOINT, model.njnt),
        "site": (_OBJ.mjOBJ_SITE, model.nsite),
        "geom": (_OBJ.mjOBJ_GEOM, model.ngeom),
    }

    def need(what: str, field: str, name: str) -> int:
        obj, count = has[what]
        i = _named(model, obj, name)
        if name and i < 0:
            problems.append(f"{field}: the model has no {what} '{name}' ({what}s: {_names(model, obj, count)})")
        return i

    base = need("body", "base_body", cfg.base_body)
    need("site", "imu_site", cfg.imu_site)
    if cfg.kind in ("multirotor", "legged") and free_joint(model) is None:
        problems.append(f"model: a {cfg.kind} robot needs a free joint (floating base); the model has none")
    if base >= 0 and free_joint(model) is not None and model.jnt_bodyid[free_joint(model)] != base:
        problems.append(f"base_body: '{cfg.base_body}' is not the body of the model's free joint")
    mass_kg = float(model.body_subtreemass[base]) if base >= 0 else float(model.body_subtreemass[0])
    if cfg.mass_kg and abs(mass_kg - cfg.mass_kg) > MASS_TOL * cfg.mass_kg:
        problems.append(f"mass_kg: config says {cfg.mass_kg} kg, the model weighs {mass_kg:.4g} kg")
    steps = 1.0 / (cfg.control_hz * model.opt.timestep)
    if abs(steps - round(steps)) > 1e-6 or round(steps) < 1:
        problems.append(
            f"control_hz: its period {1 / cfg.control_hz:g} s is not a whole number of the model's "
            f"physics steps ({model.opt.timestep:g} s, {1 / model.opt.timestep:g} Hz)"
        )
    if cfg.rotors is not None:
        for i, site in enumerate(cfg.rotors.sites):
            need("site", f"rotors.sites[{i}]", site)
        if mass_kg > 0:
            ratio = hover_thrust_to_weight(cfg, mass_kg)
            if ratio < MIN_THRUST_TO_WEIGHT:
                problems.append(
                    f"rotors.max_thrust_N: {len(cfg.rotors.names)} x {cfg.rotors.max_thrust_N} N lifts "
                    f"{ratio:.2f}x the model's weight ({mass_kg:.4g} kg); it needs at least {MIN_THRUST_TO_WEIGHT}x"
                )
    if cfg.joints is not None:
        j = cfg.joints
        for i, name in enumerate(j.names):
            jid = need("joint", f"joints.names[{i}]", name)
            if jid < 0:
                continue
            if int(model.jnt_type[jid]) not in (int(mujoco.mjtJoint.mjJNT_HINGE), int(mujoco.mjtJoint.mjJNT_SLIDE)):
                problems.append(f"joints.names[{i}]: '{name}' is not a hinge or slide joint")
            if i < len(j.default_pos_rad) and model.jnt_limited[jid]:
                lo, hi = model.jnt_range[jid]
                if not lo <= j.default_pos_rad[i] <= hi:
                    problems.append(
                        f"joints.default_pos_rad[{i}]: {name} at {j.default_pos_rad[i]:g} is outside its "
                        f"limits [{lo:g}, {hi:g}]"
                    )
    if cfg.feet is not None:
        for i, geom in enumerate(cfg.feet.geoms):
            gid = need("geom", f"feet.geoms[{i}]", geom)
            if gid >= 0 and int(model.geom_type[gid]) != int(mujoco.mjtGeom.mjGEOM_SPHERE):
                problems.append(f"feet.geoms[{i}]: '{geom}' is not a sphere (foot contact sensing needs one)")
    need("geom", "floor_geom", cfg.floor_geom)
    need("site", "end_effector_site", cfg.end_effector_site)
    need("body", "payload_body", cfg.payload_body)
    return problems


def require_robot(cfg: RobotCfg, kind: str | None = None) -> None:
    """Raise RobotConfigError with every problem of `cfg` and its model, before anything is built."""
    problems = check_robot(cfg, kind)
    if problems:
        raise RobotConfigError(cfg.source or cfg.name, problems)


def edit_spec(cfg: RobotCfg):
    """The MjSpec edit that adds what the tasks drive and read (see the module docstring)."""

    def edit(spec: mujoco.MjSpec) -> None:
        if cfg.rotors is not None:
            r = cfg.rotors
            for name, site, spin in zip(r.names, r.sites, r.spin, strict=True):
                for act in [a for a in spec.actuators if a.trntype == mujoco.mjtTrn.mjTRN_SITE and a.target == site]:
                    spec.delete(act)
                spec.add_actuator(
                    name=f"rotor_{name}",
                    target=site,
                    trntype=mujoco.mjtTrn.mjTRN_SITE,
                    gaintype=mujoco.mjtGain.mjGAIN_FIXED,
                    gainprm=[1] + [0] * 9,
                    **{**PLAIN_ACTUATOR, "gear": [0, 0, 1, 0, 0, spin * r.torque_per_thrust_m]},
                )
        if cfg.joints is not None:
            add_joint_drives(spec, cfg.joints.names, cfg.joints.per_joint("effort_limit_Nm"))
        if cfg.feet is not None:
            for name, geom_name in zip(cfg.feet.names, cfg.feet.geoms, strict=True):
                geom = spec.geom(geom_name)
                body = geom.parent
                body.add_site(
                    name=f"touch_{name}",
                    pos=geom.pos,
                    size=[geom.size[0] * FOOT_TOUCH_MARGIN, 0, 0],
                    type=mujoco.mjtGeom.mjGEOM_SPHERE,
                    group=4,
                )
                spec.add_sensor(
                    name=f"touch_{name}",
                    type=mujoco.mjtSensor.mjSENS_TOUCH,
                    objtype=_OBJ.mjOBJ_SITE,
                    objname=f"touch_{name}",
                )
            if not cfg.floor_geom:
                spec.worldbody.add_geom(
                    name="floor",
                    type=mujoco.mjtGeom.mjGEOM_PLANE,
                    size=[0, 0, 0.05],
                    contype=1,
                    conaffinity=1,
                    condim=3,
                )
        if cfg.end_effector_site:
            for kind, sensor in (
                ("pos", mujoco.mjtSensor.mjSENS_FRAMEPOS),
                ("quat", mujoco.mjtSensor.mjSENS_FRAMEQUAT),
            ):
                spec.add_sensor(
                    name=f"end_effector_{kind}", type=sensor, objtype=_OBJ.mjOBJ_SITE, objname=cfg.end_effector_site
                )
            if not cfg.payload_body:
                site = spec.site(cfg.end_effector_site)
                inertia = 0.4 * PAYLOAD_NOMINAL_KG * PAYLOAD_RADIUS_M**2
                site.parent.add_body(
                    name="payload",
                    pos=site.pos,
                    mass=PAYLOAD_NOMINAL_KG,
                    ipos=[0, 0, 0],
                    inertia=[inertia] * 3,
                    explicitinertial=True,
                )

    return edit


@dataclass
class RobotModel:
    """A robot's compiled model and the ids the tasks use, resolved once."""

    cfg: RobotCfg
    model: mujoco.MjModel
    decimation: int  # physics steps per control step
    mass_kg: float
    home_qpos: np.ndarray  # (nq,) the default pose: joints at default_pos_rad, a floating base at base_height_m, level
    base_body: int = -1
    base_qadr: int = -1  # qpos address of the floating base (position, then quaternion w, x, y, z)
    base_dadr: int = -1  # qvel address (linear velocity in the world frame, then angular in the body frame)
    joint_qadr: np.ndarray | None = None
    joint_dadr: np.ndarray | None = None
    joint_low: np.ndarray | None = None  # position limits (rad or m); +-inf where unlimited
    joint_high: np.ndarray | None = None
    drive_ctrl: np.ndarray | None = None  # ctrl columns of the drives: ff of every joint, then kq, then kqd
    torque_adr: np.ndarray | None = None  # sensordata addresses of the applied joint torques
    rotor_ctrl: np.ndarray | None = None
    foot_geoms: np.ndarray | None = None
    touch_adr: np.ndarray | None = None
    floor_geom: int = -1
    ee_pos_adr: int = -1
    ee_quat_adr: int = -1
    payload_body: int = -1

    @property
    def physics_hz(self) -> float:
        return 1.0 / float(self.model.opt.timestep)


def resolve(cfg: RobotCfg, model: mujoco.MjModel) -> RobotModel:
    """Ids of everything the config names, in a model compiled with `edit_spec(cfg)`."""
    decimation = round(1.0 / (cfg.control_hz * model.opt.timestep))
    base = model.body(cfg.base_body).id if cfg.base_body else -1
    mass = float(model.body_subtreemass[base]) if base >= 0 else float(model.body_subtreemass[0])
    r = RobotModel(cfg, model, decimation, mass, model.qpos0.copy(), base)
    free = free_joint(model)
    if free is not None:
        r.base_qadr, r.base_dadr = int(model.jnt_qposadr[free]), int(model.jnt_dofadr[free])
        r.home_qpos[r.base_qadr : r.base_qadr + 7] = (0.0, 0.0, cfg.base_height_m, 1.0, 0.0, 0.0, 0.0)
    if cfg.joints is not None:
        jids = [model.joint(n).id for n in cfg.joints.names]
        r.joint_qadr = model.jnt_qposadr[jids].copy()
        r.joint_dadr = model.jnt_dofadr[jids].copy()
        r.home_qpos[r.joint_qadr] = cfg.joints.default_pos_rad
        limited = model.jnt_limited[jids].astype(bool)
        r.joint_low = np.where(limited, model.jnt_range[jids, 0], -np.inf)
        r.joint_high = np.where(limited, model.jnt_range[jids, 1], np.inf)
        r.drive_ctrl = np.array(
            [model.actuator(f"drive_{n}{sfx}").id for sfx in ("", "_kq", "_kqd") for n in cfg.joints.names]
        )
        r.torque_adr = np.array([model.sensor_adr[model.sensor(f"drive_{n}_torque").id] for n in cfg.joints.names])
    if cfg.rotors is not None:
        r.rotor_ctrl = np.array([model.actuator(f"rotor_{n}").id for n in cfg.rotors.names])
    if cfg.feet is not None:
        r.foot_geoms = np.array([model.geom(g).id for g in cfg.feet.geoms])
        r.touch_adr = np.array([model.sensor_adr[model.sensor(f"touch_{n}").id] for n in cfg.feet.names])
        r.floor_geom = model.geom(cfg.floor_geom or "floor").id
    if cfg.end_effector_site:
        r.ee_pos_adr = int(model.sensor_adr[model.sensor("end_effector_pos").id])
        r.ee_quat_adr = int(model.sensor_adr[model.sensor("end_effector_quat").id])
        r.payload_body = model.body(cfg.payload_body or "payload").id
    return r


def robot_model(cfg: RobotCfg, kind: str | None = None) -> RobotModel:
    """Check `cfg` against its model (every problem at once), then compile it with the tasks' pieces."""
    require_robot(cfg, kind)
    return resolve(cfg, load_model(cfg.model_path, edit_spec(cfg)))
