"""The Go1-class quadruped MJCF (sim/models/quadruped.xml): structure, collision filtering, PD stance."""

from pathlib import Path

import mujoco
import numpy as np
import pytest

MODEL = Path(__file__).resolve().parents[1] / "sim" / "robots" / "go1.xml"
LEGS = ("FR", "FL", "RR", "RL")  # Unitree order
PARTS = ("hip", "thigh", "calf")
JOINTS = [f"{leg}_{part}_joint" for leg in LEGS for part in PARTS]
ACTUATORS = [f"{leg}_{part}" for leg in LEGS for part in PARTS]
FEET = [f"{leg}_foot" for leg in LEGS]
TORQUE_LIMIT = {"hip": 23.7, "thigh": 23.7, "calf": 35.55}  # Go1, N m
KP, KD = 20.0, 0.5  # legged_gym Go1 gains


@pytest.fixture(scope="module")
def model():
    return mujoco.MjModel.from_xml_path(str(MODEL))


def _home(model):
    data = mujoco.MjData(model)
    mujoco.mj_resetDataKeyframe(model, data, model.key("home").id)
    mujoco.mj_forward(model, data)
    return data


def test_structure(model):
    assert bytes(model.names).split(b"\0", 1)[0] == b"quadruped"  # the model name leads the names buffer
    assert model.nq == 7 + 12 and model.nv == 6 + 12 and model.nu == 12
    assert model.jnt_type[0] == mujoco.mjtJoint.mjJNT_FREE and model.joint(0).name == "root"
    assert model.body(model.jnt_bodyid[0]).name == "trunk"
    assert [model.joint(i).name for i in range(1, model.njnt)] == JOINTS
    assert all(model.jnt_type[1:] == mujoco.mjtJoint.mjJNT_HINGE)
    for name in JOINTS:
        axis = [1, 0, 0] if "_hip_" in name else [0, 1, 0]
        np.testing.assert_allclose(model.joint(name).axis, axis)
    assert [model.actuator(i).name for i in range(model.nu)] == ACTUATORS
    for i, name in enumerate(ACTUATORS):
        assert model.actuator_trntype[i] == mujoco.mjtTrn.mjTRN_JOINT
        assert model.joint(model.actuator_trnid[i, 0]).name == name + "_joint"
        assert model.actuator_gear[i, 0] == 1 and model.actuator_ctrllimited[i]
        lim = TORQUE_LIMIT[name.split("_")[1]]
        np.testing.assert_allclose(model.actuator_ctrlrange[i], [-lim, lim])
    assert model.key("home").name == "home"
    assert model.site("imu").bodyid[0] == model.body("trunk").id
    assert model.camera("track").mode[0] == mujoco.mjtCamLight.mjCAMLIGHT_TRACKCOM
    assert model.opt.timestep == pytest.approx(0.005)
    assert 11.0 < model.body_subtreemass[model.body("trunk").id] < 13.5


def test_home_pose(model):
    data = _home(model)
    assert data.qpos[2] > 0.2
    np.testing.assert_allclose(data.qpos[3:7], [1, 0, 0, 0])
    np.testing.assert_allclose(data.qpos[7:], [-0.1, 0.8, -1.5, 0.1, 0.8, -1.5, -0.1, 1.0, -1.5, 0.1, 1.0, -1.5])
    assert np.all(data.qpos[7:] >= model.jnt_range[1:, 0]) and np.all(data.qpos[7:] <= model.jnt_range[1:, 1])
    # feet just touch: the lowest foot sphere sits on the floor, none penetrates
    feet_z = np.array([data.geom_xpos[model.geom(f).id, 2] for f in FEET]) - np.array(
        [model.geom(f).size[0] for f in FEET]
    )
    assert feet_z.min() == pytest.approx(0.0, abs=1e-3) and np.all(feet_z > -1e-4)


def test_only_feet_collide(model):
    feet = {model.geom(f).id for f in FEET}
    floor = model.geom("floor").id
    for g in range(model.ngeom):
        if g not in feet and g != floor:
            assert model.geom_contype[g] == 0 and model.geom_conaffinity[g] == 0, model.geom(g).name
    for f in FEET:
        assert model.geom(f).type[0] == mujoco.mjtGeom.mjGEOM_SPHERE and model.geom(f).size[0] == pytest.approx(0.02)
    # sink the whole robot into the floor: only foot-floor contacts may appear
    data = _home(model)
    data.qpos[2] -= 0.35
    mujoco.mj_forward(model, data)
    pairs = {tuple(sorted(c.geom)) for c in data.contact[: data.ncon]}
    assert pairs == {tuple(sorted((floor, f))) for f in feet}


def test_pd_stance_is_stable(model):
    data = _home(model)
    key = model.key("home")
    q_home, z_home = key.qpos[7:].copy(), key.qpos[2]
    lo, hi = model.actuator_ctrlrange.T
    for _ in range(round(2.0 / model.opt.timestep)):
        data.ctrl[:] = np.clip(KP * (q_home - data.qpos[7:]) - KD * data.qvel[6:], lo, hi)
        mujoco.mj_step(model, data)
        assert data.xmat[model.body("trunk").id][8] > 0.95  # trunk z axis stays upright
    assert abs(data.qpos[2] - z_home) < 0.05
    feet = {model.geom(f).id for f in FEET}
    touching = {g for c in data.contact[: data.ncon] for g in c.geom if g in feet}
    assert touching == feet
    # the soft kp=20 stance still sways slowly (~1.6 s period, decaying) at 2 s; it must not grow
    assert np.all(np.abs(data.qvel) < 0.5)
