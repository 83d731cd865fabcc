"""The warp backend (MuJoCo Warp) against the cpu backend (native MuJoCo), on Warp's CPU device: the same
task, seed and actions give the same trajectories, observations and randomized parameters on both.

Kept small: 4 worlds, 20 control steps, one pair of envs per robot kind shared by the tests, all in one
process, so Warp compiles (or loads from its kernel cache) each kernel once."""

import json
import subprocess
import sys

import mujoco
import pytest
import torch

from s2r.cli import main
from sim.backends import BackendError, make_backend, resolve_backend
from sim.robots import find_robot, robot_model
from sim.tasks import default_cfg, make_env

pytestmark = [pytest.mark.slow, pytest.mark.filterwarnings("ignore:warp backend. no CUDA device")]

NUM_ENVS, STEPS = 4, 20
# float32 (Warp) against float64 (MuJoCo): over 20 control steps (up to 80 physics steps, with contacts
# for the quadruped) positions agreed to 6e-6 and observations to 3e-4 (foot forces in N) when measured
QPOS_TOL = 1e-4
OBS_RTOL, OBS_ATOL = 1e-3, 1e-3
ROBOT_KINDS = {"multirotor": ("quadrotor-hover", "crazyflie"), "legged": ("quadruped-walk", "go2")}
ROBOT_KINDS["arm"] = ("arm-reach", "open_manipulator_x")
# the model fields the startup events write (sim/terms/events.py)
EVENT_FIELDS = ("geom_friction", "body_mass", "body_ipos", "body_inertia")
EVENT_FIELDS += ("dof_damping", "dof_frictionloss", "dof_armature")


@pytest.fixture(scope="module", params=list(ROBOT_KINDS))
def rollouts(request):
    """Both backends' envs of one task, stepped with the same random actions; what each step returned."""
    task, robot = ROBOT_KINDS[request.param]
    envs = {b: make_env(task, NUM_ENVS, default_cfg(task, robot), seed=0, backend=b) for b in ("cpu", "warp")}
    steps = {b: [(e.reset(), None, None, None, e.backend.qpos.double().clone())] for b, e in envs.items()}
    actions = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        action = torch.rand(NUM_ENVS, envs["cpu"].spec.action_dim, generator=actions) * 2 - 1
        for b, e in envs.items():
            obs, reward, terminated, truncated, _ = e.step(action)
            sensors = e.backend.sensordata.double().clone()
            steps[b].append((obs, reward, terminated | truncated, sensors, e.backend.qpos.double().clone()))
    yield envs, steps
    for e in envs.values():
        e.close()


def test_trajectories_agree(rollouts):
    _, steps = rollouts
    for (obs_c, rew_c, done_c, sens_c, qpos_c), (obs_w, rew_w, done_w, sens_w, qpos_w) in zip(
        steps["cpu"], steps["warp"], strict=True
    ):
        assert (qpos_w - qpos_c).abs().max() < QPOS_TOL
        for group in ("policy", "critic"):
            torch.testing.assert_close(obs_w[group], obs_c[group], rtol=OBS_RTOL, atol=OBS_ATOL)
        if rew_c is not None:
            torch.testing.assert_close(rew_w, rew_c, rtol=OBS_RTOL, atol=OBS_ATOL)
            assert torch.equal(done_w, done_c)
            # the sensors of the last physics step's forward pass on both (joint torques, foot forces)
            torch.testing.assert_close(sens_w, sens_c, rtol=OBS_RTOL, atol=OBS_ATOL)


def test_randomized_parameters_reach_both_backends(rollouts):
    """The startup events' values (model variants) are the same on both and are what each world steps:
    the cpu backend's model of env i, the warp backend's per-world row i."""
    envs, _ = rollouts
    cpu, warp = envs["cpu"], envs["warp"]
    if not cpu.startup_events:
        pytest.skip("this task randomizes no model fields")
    torch.testing.assert_close(warp.params, cpu.params)
    assert torch.equal(warp.backend.env_variant, cpu.backend.env_variant)
    nominal = cpu.backend.model
    changed = {
        name
        for v in cpu.backend.variants
        for name in EVENT_FIELDS
        if not (getattr(v, name) == getattr(nominal, name)).all()
    }
    assert changed, "the startup events changed no model field"
    for name in changed:
        per_world = getattr(warp.backend.mjw_model, name).numpy()
        assert per_world.shape[0] == NUM_ENVS, f"{name} has no world dimension"
        for i, model in enumerate(cpu.backend._models):
            torch.testing.assert_close(torch.as_tensor(per_world[i]).double(), torch.as_tensor(getattr(model, name)))


def test_a_field_without_a_world_dimension_is_named():
    model = robot_model(find_robot("crazyflie")).model
    backend = make_backend("warp", model, 2, model_variants=2)
    backend.variants[1].geom_condim[:] = 1
    with pytest.raises(BackendError, match="geom_condim"):
        backend.set_env_variant(torch.arange(2), torch.tensor([0, 1]))


def test_a_contact_overflow_is_an_error():
    """A crazyflie resting on the floor (4 box-plane contacts per world) with room for 1 contact per world."""
    from sim.backends.mujoco_warp import MujocoWarpBackend

    model = robot_model(find_robot("crazyflie")).model
    backend = MujocoWarpBackend(model, 2, device="cpu", nconmax=1)
    assert backend.nconmax == 1 and MujocoWarpBackend(model, 2, device="cpu").nconmax >= 4
    qpos = torch.tensor([[0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]]).repeat(2, 1)
    backend.reset(torch.arange(2), qpos, torch.zeros(2, 6))
    with pytest.raises(BackendError, match="NARROWPHASE"):
        backend.step(2)


def test_backend_names_and_clear_errors(monkeypatch):
    assert resolve_backend("mujoco") == "cpu"  # the cpu backend's name before the warp backend
    assert resolve_backend("auto") == ("warp" if torch.cuda.is_available() else "cpu")
    with pytest.raises(BackendError, match="unknown backend 'gpu'; available: cpu, warp, auto"):
        make_env("quadrotor-hover", 1, backend="gpu")
    model = mujoco.MjModel.from_xml_string("<mujoco/>")
    if not torch.cuda.is_available():
        with pytest.raises(BackendError, match="no CUDA device"):
            make_backend("warp", model, 1, device="cuda:0")
    monkeypatch.delitem(sys.modules, "sim.backends.mujoco_warp", raising=False)
    monkeypatch.setitem(sys.modules, "mujoco_warp", None)  # as where the package is not installed
    with pytest.raises(BackendError, match="needs the mujoco-warp package"):
        make_backend("warp", model, 1)


def test_the_cpu_backend_does_not_import_warp():
    """So it takes no GPU memory: Warp creates its CUDA context when it starts."""
    code = (
        "import sys; from sim.tasks import make_env; make_env('quadrotor-hover', 2, backend='cpu').reset(); "
        "assert 'warp' not in sys.modules, 'warp imported'"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr


def test_training_runs_on_warp_and_resumes_on_cpu(tmp_path, capsys):
    """`s2r train --backend warp`; its checkpoint holds the cpu backend's state layout, so the run goes
    on with `--backend cpu` exactly where it stopped."""
    run = tmp_path / "run"
    common = [
        "--no-progress",
        "--no-export",
        "--run-dir",
        str(run),
        "--num-envs",
        str(NUM_ENVS),
        "--ppo.num-steps",
        "8",
    ]
    assert main(["train", "--task", "quadrotor-hover", "--backend", "warp", "--max-iterations", "2", *common]) == 0
    assert '"backend": "warp"' in (run / "config.json").read_text()
    assert main(["train", "--resume", str(run), "--backend", "cpu", "--max-iterations", "3", *common]) == 0
    assert "trained 3 iterations" in capsys.readouterr().out


def test_bench_sim_on_warp_prints_the_ratio_to_mjw_step(tmp_path, capsys):
    out = tmp_path / "bench.json"
    args = ["bench", "sim", "--backend", "warp", "--num-envs", str(NUM_ENVS), "--steps", "8", "--repeats", "2"]
    assert main([*args, "--json", str(out)]) == 0
    assert "raw mjw.step ceiling" in capsys.readouterr().out
    figures = json.loads(out.read_text())
    assert figures["backend"] == "warp" and figures["mj_step_ceiling_per_s"] > 0 and figures["ratio"] > 0
