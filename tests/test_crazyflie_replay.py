"""Foreign-log import through a mapping file, the dynamics gap, and system identification against two
real Crazyflie 2.1 flights (NanoBench)."""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from replay.dynamics_gap import Plant, dynamics_gap
from replay.mapping import (
    RIGID,
    MappingError,
    clock_report,
    get_field,
    import_log,
    load_mapping,
    make_log,
    parse_mapping,
)
from replay.sysid import STOCK_MJCF, fit_crazyflie, in_flight, stock_plant, stock_thrust_N
from sim.actuators import RotorModel
from sim.backends.mujoco_cpu import MujocoCpuBackend, physics_substeps

DATA = Path(__file__).parents[2] / "shared/data/crazyflie-flights"
FIT, HELDOUT = DATA / "B3_figure8_fast_rep1.csv", DATA / "B2_circle_fast_rep1.csv"
needs_data = pytest.mark.skipif(not DATA.is_dir(), reason=f"real Crazyflie flights not found at {DATA}")


@pytest.fixture(scope="module")
def mapping():
    return load_mapping("crazyflie_nanobench")


def _write_rows(path: Path, header: list[str], rows: list[list[str]]) -> None:
    path.write_text("\n".join([",".join(header)] + [",".join(r) for r in rows]) + "\n")


def _read_rows(path: Path, n: int) -> tuple[list[str], list[list[str]]]:
    lines = path.read_text().splitlines()
    return lines[0].split(","), [line.split(",") for line in lines[1 : n + 1]]


@needs_data
@pytest.mark.parametrize("name, rows", [(FIT.name, 2677), (HELDOUT.name, 2674)])
def test_import_real_flights(mapping, name, rows):
    log = import_log(DATA / name, mapping, chunk_rows=500)  # several chunks
    assert len(log) == rows and log.motor_cmd.shape == (rows, 4) and log.quat_wxyz.shape == (rows, 4)
    assert np.median(np.diff(log.t_s)) == pytest.approx(0.01, abs=1e-5)
    assert log.clock.jumps == 0 and log.clock.gaps <= 3  # a few 20 ms intervals: one sample dropped each
    np.testing.assert_allclose(np.linalg.norm(log.quat_wxyz, axis=1), 1.0, atol=1e-9)
    fly = in_flight(log)
    assert fly.sum() > 1500
    assert 50_000 < np.median(log.motor_cmd[fly]) < 58_000  # hover PWM ~54k
    assert 3.2 < np.median(log.vbat_V[fly]) < 4.2
    assert np.median(np.abs(log.pos_w_m[fly, 2] - log["target_pos_w_m"][fly, 2])) < 0.1
    assert np.median(log.pos_w_m[fly, 2]) == pytest.approx(1.0, abs=0.1)
    assert np.median(log["specific_force_b_mps2"][fly, 2]) == pytest.approx(9.81, rel=0.05)  # g -> m/s^2
    assert np.abs(log["rpy_rad"][fly]).max() < np.pi  # deg -> rad


@needs_data
def test_missing_column_names_it(mapping, tmp_path):
    header, rows = _read_rows(HELDOUT, 20)
    j = header.index("pz")
    _write_rows(tmp_path / "cut.csv", header[:j] + header[j + 1 :], [r[:j] + r[j + 1 :] for r in rows])
    with pytest.raises(MappingError, match=r"column 'pz' \(mapping entry quantities.pos_w_m\)"):
        import_log(tmp_path / "cut.csv", mapping)


def test_bad_mapping_key_names_it():
    good = {
        "format": "csv",
        "rate_hz": 100,
        "time": {"fields": ["t"]},
        "quantities": {
            "pos_w_m": {"fields": ["x", "y", "z"]},
            "quat_wxyz": {"fields": ["qw", "qx", "qy", "qz"]},
            "lin_vel_w_mps": {"fields": ["vx", "vy", "vz"]},
            "ang_vel_b_radps": {"fields": ["p", "q", "r"], "unit": "deg"},
            "motor_cmd": {"fields": ["m1", "m2"]},
        },
    }
    parse_mapping(good)
    bad = {**good, "quantities": {**good["quantities"], "pos_w_m": {"colums": ["x", "y", "z"]}}}
    with pytest.raises(MappingError, match=r"quantities.pos_w_m.colums: unknown key"):
        parse_mapping(bad)
    with pytest.raises(MappingError, match=r"quantities.ang_vel_b_radps.unit"):
        parse_mapping(
            {
                **good,
                "quantities": {**good["quantities"], "ang_vel_b_radps": {"fields": ["p", "q", "r"], "unit": "grad"}},
            }
        )
    with pytest.raises(MappingError, match=r"quantities.pos_w_m.fields: needs 3 fields"):
        parse_mapping({**good, "quantities": {**good["quantities"], "pos_w_m": {"fields": ["x", "y"]}}})
    with pytest.raises(MappingError, match=r"rate_hz"):
        parse_mapping({**good, "rate_hz": 0})
    no_motors = parse_mapping({**good, "quantities": {k: v for k, v in good["quantities"].items() if k != "motor_cmd"}})
    with pytest.raises(MappingError, match=r"no quantity 'motor_cmd' \(system identification\)"):
        no_motors.require(RIGID, "system identification")
    with pytest.raises(MappingError, match=r"quantities.pos_w_m.joints: only joint quantities"):
        parse_mapping(
            {
                **good,
                "quantities": {**good["quantities"], "pos_w_m": {"fields": ["x", "y", "z"], "joints": ["a", "b", "c"]}},
            }
        )


def test_get_field_paths():
    odom = SimpleNamespace(pose=SimpleNamespace(pose=SimpleNamespace(position=SimpleNamespace(x=1.5))))
    assert get_field(odom, "pose.pose.position.x") == 1.5
    assert get_field({"data": [0.0, 2.0]}, "data[1]") == 2.0
    with pytest.raises(MappingError, match=r"pose.pose.orientation.w.*'orientation'"):
        get_field(odom, "pose.pose.orientation.w")


@needs_data
def test_clock_jump_and_dropped_row_are_reported(mapping, tmp_path):
    header, rows = _read_rows(HELDOUT, 300)
    rows = rows[:100] + rows[101:]  # row 100 dropped
    rows[200][0] = rows[150][0]  # the clock jumps back half a second
    _write_rows(tmp_path / "bad_clock.csv", header, rows)
    log = import_log(tmp_path / "bad_clock.csv", mapping, chunk_rows=64)
    assert len(log) == 299
    assert log.clock.jumps == 1 and log.clock.first_jumps == (200,)
    assert log.clock.gaps == 2 and log.clock.first_gaps == (100, 201)  # the drop, and the jump's return
    assert log.clock.dropped >= 1
    assert not log.step_ok[[100, 200, 201]].any() and log.step_ok.sum() == 296


def _simulated_log(plant: Plant, steps: int = 300, seed: int = 0):
    """A log written by the simulator itself: rotor thrust commands around hover, states every step."""
    rng = np.random.default_rng(seed)
    backend = MujocoCpuBackend(plant.mjcf_path, 1)
    rotors = RotorModel(1, 4, 0.01, plant.max_thrust_N, "cpu")
    rotors.set_params(torch.arange(1), tau_s=torch.tensor([plant.tau_s]), thrust_scale=torch.ones(1))
    hover_N = 0.027 * 9.81 / 4
    cmd_N = hover_N * (1 + 0.05 * rng.standard_normal((steps, 4))) + 0.002 * np.sin(np.arange(steps) / 20)[:, None]
    rotors.reset(torch.arange(1), torch.full((1, 4), hover_N))
    states = np.empty((steps, 13))
    for i in range(steps):
        states[i] = np.concatenate((backend.qpos[0].numpy(), backend.qvel[0].numpy()))
        backend.ctrl.copy_(rotors.step(torch.from_numpy(cmd_N[i : i + 1]).float()))
        backend.step(physics_substeps(backend.model, 0.01))
    backend.close()
    t_s = np.arange(steps) * 0.01
    clock, ok = clock_report(t_s, 0.01)
    values = {
        "pos_w_m": states[:, :3],
        "quat_wxyz": states[:, 3:7],
        "lin_vel_w_mps": states[:, 7:10],
        "ang_vel_b_radps": states[:, 10:13],
        "motor_cmd": cmd_N,
    }
    return make_log(t_s, values, clock, ok, "simulated"), cmd_N


def test_dynamics_gap_self_consistent():
    plant = Plant("sim", str(STOCK_MJCF), 0.03, 0.15)
    log, cmd_N = _simulated_log(plant)
    gap = dynamics_gap(log, cmd_N, plant, ks=(1, 10, 50), chunk=64)  # several chunks
    assert gap["windows"] == 300 - 50 - plant.warmup_steps(0.01)
    k1, k10 = gap["k"]["1"], gap["k"]["10"]
    assert (
        k1["pos_m"]["norm"]["p90"] < 1e-7
        and k1["vel_mps"]["norm"]["p90"] < 1e-5
        and k1["att_rad"]["norm"]["p90"] < 1e-6
    )
    # the rotor state at a start is rebuilt from 27 steps of commands: within e^-8 of the truth
    assert k10["pos_m"]["norm"]["p90"] < 1e-5 and k10["att_rad"]["norm"]["p90"] < 1e-4
    # a wrong motor lag shows up as a gap
    wrong = dynamics_gap(log, cmd_N, Plant("slow", str(STOCK_MJCF), 0.08, 0.15), ks=(10,))
    assert wrong["k"]["10"]["att_rad"]["norm"]["mean"] > 100 * gap["k"]["10"]["att_rad"]["norm"]["mean"]


@needs_data
@pytest.mark.slow
def test_fitted_model_beats_stock_on_heldout_flight(mapping, tmp_path):
    fit_log, heldout = import_log(FIT, mapping), import_log(HELDOUT, mapping)
    result, fitted = fit_crazyflie(fit_log, tmp_path)
    assert (tmp_path / "quadrotor_crazyflie_fit.xml").is_file()
    assert result.curve.form == "vbat_quadratic"  # battery sag matters: the README's caveat
    fly = in_flight(heldout)
    stock = dynamics_gap(heldout, stock_thrust_N(heldout), stock_plant(), ks=(10,), valid=fly)
    ours = dynamics_gap(heldout, result.thrust_N(heldout), fitted, ks=(10,), valid=fly)
    assert ours["windows"] > 1500
    assert ours["k"]["10"]["pos_m"]["norm"]["mean"] < 0.5 * stock["k"]["10"]["pos_m"]["norm"]["mean"]
    assert ours["k"]["10"]["pos_m"]["norm"]["mean"] < 0.01


BAG_MAPPING = {  # another stack's topics for the same flight, as a bag mapping names them
    "description": "a foreign Crazyflie stack's bag",
    "format": "bag",
    "rate_hz": 100,
    "time": {"topic": "/cf/odom", "fields": ["header.stamp"]},
    "quantities": {
        "pos_w_m": {"topic": "/cf/odom", "fields": [f"pose.pose.position.{a}" for a in "xyz"]},
        "quat_wxyz": {
            "topic": "/cf/odom",
            "fields": [f"pose.pose.orientation.{a}" for a in "xyzw"],
            "quat_order": "xyzw",
        },
        "lin_vel_w_mps": {"topic": "/cf/odom", "fields": [f"twist.twist.linear.{a}" for a in "xyz"]},
        "ang_vel_b_radps": {"topic": "cf/imu", "fields": [f"angular_velocity.{a}" for a in "xyz"]},
        "motor_cmd": {"topic": "/cf/motors", "fields": [f"data[{i}]" for i in range(4)]},
        "vbat_V": {"topic": "/cf/battery", "fields": ["data"]},
    },
}


@needs_data
def test_foreign_bag_imports_through_a_mapping_as_the_csv_does(mapping, tmp_path):
    """The first 400 rows of a real flight, written as another stack's bag (odometry, IMU, motor array and
    battery on their own topics, the IMU and motors stamped just before the odometry), read through a bag
    mapping: the same log as the CSV import of those rows."""
    from replay.bag import BagWriter

    header, rows = _read_rows(FIT, 400)
    _write_rows(tmp_path / "part.csv", header, rows)
    csv_log = import_log(tmp_path / "part.csv", mapping)
    with BagWriter(tmp_path / "bag") as bag:
        for i in range(len(csv_log)):
            t_ns = int(round(csv_log.t_s[i] * 1e9))
            sec, nsec = divmod(t_ns, 10**9)
            w, x, y, z = csv_log.quat_wxyz[i]
            bag.write_msg(
                "/cf/imu",
                "sensor_msgs/msg/Imu",
                {"angular_velocity": dict(zip("xyz", csv_log.ang_vel_b_radps[i], strict=True))},
                t_ns - 2000,
            )
            bag.write_msg(
                "/cf/motors", "std_msgs/msg/Float64MultiArray", {"data": csv_log.motor_cmd[i].tolist()}, t_ns - 1000
            )
            bag.write_msg("/cf/battery", "std_msgs/msg/Float64", {"data": float(csv_log.vbat_V[i, 0])}, t_ns - 500)
            bag.write_msg(
                "/cf/odom",
                "nav_msgs/msg/Odometry",
                {
                    "header": {"stamp": {"sec": sec, "nanosec": nsec}},
                    "pose": {
                        "pose": {
                            "position": dict(zip("xyz", csv_log.pos_w_m[i], strict=True)),
                            "orientation": {"w": w, "x": x, "y": y, "z": z},
                        }
                    },
                    "twist": {"twist": {"linear": dict(zip("xyz", csv_log.lin_vel_w_mps[i], strict=True))}},
                },
                t_ns,
            )
    bag_mapping = parse_mapping(BAG_MAPPING)
    log = import_log(tmp_path / "bag", bag_mapping)
    assert len(log) == len(csv_log) and log.clock.jumps == 0
    for name in ("t_s", "pos_w_m", "quat_wxyz", "lin_vel_w_mps", "ang_vel_b_radps", "motor_cmd", "vbat_V"):
        np.testing.assert_allclose(getattr(log, name), getattr(csv_log, name), atol=1e-9, err_msg=name)
    missing = {
        **BAG_MAPPING,
        "quantities": {**BAG_MAPPING["quantities"], "vbat_V": {"topic": "/cf/vbat", "fields": ["data"]}},
    }
    with pytest.raises(ValueError, match="/cf/vbat"):
        import_log(tmp_path / "bag", parse_mapping(missing))


@needs_data
def test_policy_scored_on_a_real_flight(tmp_path):
    """The shipped hover policy on a real Crazyflie flight: observations rebuilt from the mapped readings
    (position, attitude, velocities, the controller's setpoint as target), its shift and rank reported."""
    import json

    from replay.bench import SHIPPED
    from s2r.cli import main

    out = tmp_path / "scored"
    assert (
        main(
            [
                "replay",
                str(HELDOUT),
                "--mapping",
                "crazyflie_nanobench",
                "--policy",
                str(SHIPPED / "quadrotor.onnx"),
                "--out",
                str(out),
                "--episodes",
                "10",
            ]
        )
        == 0
    )
    m = json.loads((out / "metrics.json").read_text())
    assert (
        m["rows"] == 2674
        and m["readings"]["target_pos_w"] == "target_pos_w_m"
        and m["readings"]["base_lin_vel_b"] == "lin_vel_b_mps"
    )
    terms = m["shift"]["quadrotor"]["terms"]
    assert set(terms) == {"pos_error_b", "rot_mat", "lin_vel_b", "ang_vel_b", "last_action"}
    assert all(np.isfinite(t["rms_z"]) and t["rms_z"] > 0 for t in terms.values())
    assert m["ranking"]["order"][0]["policy"] == "quadrotor" and m["starts"] >= 1
    for name in ("report.html", "shift.png", "actions.png"):
        assert (out / name).is_file(), name


def test_policy_readings_missing_or_misordered_are_named(tmp_path):
    from deploy.onnx_policy import read_spec
    from replay.bench import SHIPPED
    from replay.candidates import ReplayError
    from replay.foreign import control_stride, reading_columns

    spec = read_spec(SHIPPED / "quadruped.onnx")
    joints = list(spec.action.names)
    raw = {
        "format": "csv",
        "rate_hz": 200,
        "time": {"fields": ["t"]},
        "quantities": {
            "quat_wxyz": {"fields": ["qw", "qx", "qy", "qz"]},
            "ang_vel_b_radps": {"fields": ["p", "q", "r"]},
            "command": {"fields": ["vx", "vy", "wz"]},
            "joint_pos_rad": {"fields": [f"q{i}" for i in range(12)], "joints": joints[::-1]},
            "joint_vel_radps": {"fields": [f"dq{i}" for i in range(12)]},
        },
    }
    cols = reading_columns(parse_mapping(raw), spec)
    assert cols["joint_pos"][1].tolist() == list(range(11, -1, -1)) and cols["joint_vel"][1].tolist() == list(range(12))
    assert control_stride(200, spec.control_hz) == 4
    with pytest.raises(ReplayError, match="not a whole multiple"):
        control_stride(120, spec.control_hz)
    wrong = {
        **raw,
        "quantities": {
            **raw["quantities"],
            "joint_pos_rad": {"fields": [f"q{i}" for i in range(12)], "joints": ["hip"] + joints[1:]},
        },
    }
    with pytest.raises(MappingError, match=rf"no joints \['{joints[0]}'\]"):
        reading_columns(parse_mapping(wrong), spec)
    short = {**raw, "quantities": {**raw["quantities"], "joint_vel_radps": {"fields": ["dq0", "dq1"]}}}
    with pytest.raises(MappingError, match="has 2 fields; the policy has 12 joints"):
        reading_columns(parse_mapping(short), spec)
    no_cmd = {**raw, "quantities": {k: v for k, v in raw["quantities"].items() if k != "command"}}
    with pytest.raises(
        MappingError,
        match=r"no quantity 'command' \(the policy's reading 'command' for observation term\(s\) \['command'\]\)",
    ):
        reading_columns(parse_mapping(no_cmd), spec)


@needs_data
@pytest.mark.slow
def test_fit_writes_metrics_and_report_and_names_cut_flights(tmp_path):
    """`s2r replay --fit` writes metrics.json and report.html (with `--policy` too: one of each, both parts);
    flights cut mid-line, as a logger killed mid-write leaves them, read to their last complete line, the
    cut named."""
    import json

    from replay.bench import SHIPPED
    from s2r.cli import main

    for src, name in ((FIT, "fit.csv"), (HELDOUT, "heldout.csv")):
        header, rows = _read_rows(src, 1201)
        _write_rows(tmp_path / name, header, rows[:-1])
        with open(tmp_path / name, "a") as f:
            f.write(",".join(rows[-1])[:30])  # line 1202, cut inside its 'py' cell
    cut = (
        "{} ends inside line 1202 (column 'py': missing, the line has 2 of the header's 52 cells), its writer did not "
    )
    cut += "finish it: read up to line 1201"
    args = [
        "replay",
        str(tmp_path / "heldout.csv"),
        "--mapping",
        "crazyflie_nanobench",
        "--fit",
        str(tmp_path / "fit.csv"),
    ]
    for out, more in ((tmp_path / "fit", []), (tmp_path / "both", ["--policy", str(SHIPPED / "quadrotor.onnx")])):
        assert main(args + more + ["--out", str(out), "--episodes", "1"]) == 0
        m = json.loads((out / "metrics.json").read_text())
        assert m["recovery_notes"] == [cut.format("heldout.csv")]
        assert m["sysid"]["recovery_notes"] == {"fit": [cut.format("fit.csv")], "heldout": [cut.format("heldout.csv")]}
        assert m["sysid"]["parameters"]["tau_s"] > 0 and m["sysid"]["heldout"]["fitted"]["windows"] > 100
        report = (out / "report.html").read_text()
        assert "<h2>Model fit</h2>" in report and 'src="heldout_predictions.png"' in report
        assert "fit flight cut short: fit.csv ends" in report and "; cut short: heldout.csv ends" in report
        assert ("<h2>Ranking</h2>" in report) == ("ranking" in m) == bool(more)
