"""The UR5e-class arm model (sim/models/arm.xml), checked with mujoco directly: structure, kinematics against
UR5e Denavit-Hartenberg forward kinematics, and explicit PD at the physics rate holding and stepping."""

import re
from pathlib import Path

import mujoco
import numpy as np
import pytest

MODEL = Path(__file__).resolve().parent.parent / "sim" / "robots" / "ur5e.xml"
JOINTS = [
    "shoulder_pan_joint",
    "shoulder_lift_joint",
    "elbow_joint",
    "wrist_1_joint",
    "wrist_2_joint",
    "wrist_3_joint",
]
TORQUE_LIMITS = [150, 150, 150, 28, 28, 28]  # N·m, UR5e
HOME = [0, -1.57, 1.57, -1.57, -1.57, 0]

# UR5e standard DH parameters (UR's published table), independent of the MJCF.
DH_D = [0.1625, 0, 0, 0.1333, 0.0997, 0.0996]
DH_A = [0, -0.425, -0.3922, 0, 0, 0]
DH_ALPHA = [np.pi / 2, 0, 0, np.pi / 2, -np.pi / 2, 0]


def dh_fk(q):
    """Tool flange pose (4x4) in the DH base frame."""
    T = np.eye(4)
    for th, d, a, al in zip(q, DH_D, DH_A, DH_ALPHA, strict=True):
        ct, st, ca, sa = np.cos(th), np.sin(th), np.cos(al), np.sin(al)
        T = T @ np.array(
            [[ct, -st * ca, st * sa, a * ct], [st, ct * ca, -ct * sa, a * st], [0, sa, ca, d], [0, 0, 0, 1]]
        )
    return T


def documented_gains():
    """kp, kd as written in the MJCF header comment: the gains tested are the gains documented."""
    text = MODEL.read_text()
    gains = {}
    for name in ("kp", "kd"):
        m = re.search(rf"^\s*{name} = \[([^\]]*)\]", text, re.MULTILINE)
        assert m, f"{name} not documented in the header of {MODEL.name}"
        gains[name] = np.array([float(v) for v in m.group(1).split(",")])
        assert gains[name].shape == (6,)
    return gains["kp"], gains["kd"]


@pytest.fixture(scope="module")
def model():
    return mujoco.MjModel.from_xml_path(str(MODEL))


def test_structure(model):
    m = model
    assert m.nq == m.nv == m.njnt == 6
    assert [m.joint(i).name for i in range(m.njnt)] == JOINTS
    assert all(t == mujoco.mjtJoint.mjJNT_HINGE for t in m.jnt_type)
    ranges = np.array([[-2 * np.pi, 2 * np.pi]] * 6)
    ranges[2] = [-np.pi, np.pi]
    assert np.all(m.jnt_limited) and np.allclose(m.jnt_range, ranges, atol=1e-6)
    assert np.all(m.dof_armature[:3] >= 0.05) and np.all(m.dof_armature[3:] >= 0.02)

    assert m.nu == 6
    assert [m.actuator(i).name for i in range(m.nu)] == [j.removesuffix("_joint") for j in JOINTS]
    assert list(m.actuator_trnid[:, 0]) == list(range(6))  # one per joint, in order
    assert np.all(m.actuator_gear[:, 0] == 1) and np.all(m.actuator_ctrllimited)
    assert np.all(m.actuator_biastype == mujoco.mjtBias.mjBIAS_NONE)  # plain torque motors
    assert np.allclose(m.actuator_ctrlrange, np.c_[-np.array(TORQUE_LIMITS), TORQUE_LIMITS])

    m.site("ee"), m.body("payload"), m.body("base"), m.camera("front"), m.geom("floor")
    assert np.isclose(m.body("payload").mass[0], 0.01)
    assert m.body("base").parentid[0] == 0 and m.body("base").dofnum[0] == 0 and np.allclose(m.body("base").pos, 0)
    target = m.body("target")
    assert target.mocapid[0] >= 0
    tgeom = m.geom(target.geomadr[0])
    assert tgeom.contype[0] == 0 and tgeom.conaffinity[0] == 0 and tgeom.group[0] == 1

    total = m.body_mass.sum() - target.mass[0]
    assert 21.0 <= total <= 23.0, total
    assert m.opt.timestep <= 0.005 and m.opt.integrator == mujoco.mjtIntegrator.mjINT_EULER

    k = m.keyframe("home")
    assert np.allclose(k.qpos, HOME)


def test_links_collide_only_with_floor(model):
    m = model
    floor = m.geom("floor").id
    for i in range(m.ngeom):
        for j in range(i + 1, m.ngeom):
            if floor in (i, j):
                continue
            collide = (m.geom_contype[i] & m.geom_conaffinity[j]) or (m.geom_contype[j] & m.geom_conaffinity[i])
            assert not collide, (m.geom(i).name, m.geom(j).name)
    links = [i for i in range(m.ngeom) if m.geom_bodyid[i] > m.body("base").id and m.geom_contype[i]]
    assert len(links) >= 6  # every moving link has collision geometry against the floor
    assert all(m.geom_contype[i] & m.geom_conaffinity[floor] for i in links)


def test_ee_matches_ur5e_dh_kinematics(model):
    m, d = model, mujoco.MjData(model)
    mujoco.mj_resetDataKeyframe(m, d, m.keyframe("home").id)
    mujoco.mj_kinematics(m, d)
    T = dh_fk(HOME)
    assert np.linalg.norm(d.site("ee").xpos - T[:3, 3]) < 0.01
    assert d.site("ee").xmat.reshape(3, 3)[:, 2] @ [0, 0, -1] > 0.99  # tool points down at home
    assert d.ncon == 0

    rng = np.random.default_rng(0)
    for _ in range(20):
        q = rng.uniform(-np.pi, np.pi, 6)
        d.qpos[:] = q
        mujoco.mj_kinematics(m, d)
        T = dh_fk(q)
        assert np.linalg.norm(d.site("ee").xpos - T[:3, 3]) < 1e-3
        assert np.allclose(d.site("ee").xmat.reshape(3, 3), T[:3, :3], atol=1e-3)  # flange frame = DH frame 6
        # Reach: the flange stays within a2 + a3 + |(d4, d5, d6)| of the shoulder (UR5e nominal reach 0.85 m).
        reach = -DH_A[1] - DH_A[2] + np.linalg.norm(DH_D[3:])
        assert np.linalg.norm(d.site("ee").xpos - [0, 0, DH_D[0]]) <= reach + 1e-9


def run_pd(model, q_ref, seconds):
    m, d = model, mujoco.MjData(model)
    kp, kd = documented_gains()
    lo, hi = m.actuator_ctrlrange.T
    mujoco.mj_resetDataKeyframe(m, d, m.keyframe("home").id)
    mujoco.mj_forward(m, d)
    for _ in range(int(round(seconds / m.opt.timestep))):
        d.ctrl[:] = np.clip(kp * (q_ref - d.qpos) - kd * d.qvel, lo, hi)
        mujoco.mj_step(m, d)
    assert np.all(np.isfinite(d.qpos)) and np.all(np.isfinite(d.qvel))
    return np.abs(q_ref - d.qpos), np.abs(d.qvel)


def test_pd_holds_home_under_gravity(model):
    err, vel = run_pd(model, np.array(HOME), 2.0)
    assert err.max() < 0.02, err
    assert vel.max() < 1e-3, vel


@pytest.mark.parametrize("step", [0.3, -0.3])
def test_pd_step_settles_in_one_second(model, step):
    err, vel = run_pd(model, np.array(HOME) + step, 1.0)
    assert err.max() < 0.02, err
    assert vel.max() < 1e-2, vel


@pytest.mark.parametrize("armature_scale", [1.0, 0.5])
def test_explicit_pd_is_stable_in_every_pose(model, armature_scale):
    """The torque is computed from the state at the start of each step, so the closed loop is the
    linearized one-step map A + B K; its spectral radius must stay < 1 in all poses (effective inertia of
    pan and elbow drops to ~0.2 kg·m² in some), also if randomization halves the armature."""
    m = mujoco.MjModel.from_xml_path(str(MODEL))
    m.dof_armature[:] *= armature_scale
    d = mujoco.MjData(m)
    kp, kd = documented_gains()
    K = np.hstack([-np.diag(kp), -np.diag(kd)])
    A, B = np.zeros((2 * m.nv, 2 * m.nv)), np.zeros((2 * m.nv, m.nu))
    rng = np.random.default_rng(1)
    checked = 0
    for _ in range(300):
        d.qpos[:] = rng.uniform(-np.pi, np.pi, 6)
        d.qvel[:] = 0
        mujoco.mj_forward(m, d)
        if d.ncon:  # on the floor: contact stiffness, not the PD loop
            continue
        mujoco.mjd_transitionFD(m, d, 1e-6, True, A, B, None, None)
        radius = np.abs(np.linalg.eigvals(A + B @ K)).max()
        assert radius < 1.0, (radius, d.qpos.copy())
        checked += 1
    assert checked > 100
