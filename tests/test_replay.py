"""s2r replay (replay/evaluate.py and its passes) on sim-in-the-loop bags: sim_robot_node, policy_node and the recorder
as processes over Fast DDS (as the launch file starts them), the shipped quadrotor policy flying.

Two bags are recorded at once: the sim robot with every randomized parameter pinned to the nominal
plant's value, and with a reality gap (weaker rotors, heavier body, slower motors). The candidate
without randomization is trained here as the shipped one was (README command (a), seed 0) with every
randomization range pinned, so the two differ in randomization alone."""

from __future__ import annotations

import dataclasses
import json
import random
import time
from pathlib import Path

import pytest

from replay.bag import BagWriter
from replay.candidates import ReplayError, load_candidate
from replay.evaluate import replay_bag
from replay.gap_pass import dynamics_pass, nominal_cfg
from replay.io_pass import policy_io_pass
from s2r.cli import main

NOMINAL = [
    "mass_scale=1.0",
    "thrust_scale=1.0",
    "motor_tau_s=0.05",
    "latency_steps=0",
    "disturbance_x_N=0.0",
    "disturbance_y_N=0.0",
    "disturbance_z_N=0.0",
]
GAPPED = [
    "mass_scale=1.15",
    "thrust_scale=0.85",
    "motor_tau_s=0.08",
    "latency_steps=0",
    "disturbance_x_N=0.0",
    "disturbance_y_N=0.0",
    "disturbance_z_N=0.0",
]
NO_DR = [
    "--task.events.mass.params.scale",
    "1.0",
    "1.0",
    "--task.events.rotors.params.thrust_scale",
    "1.0",
    "1.0",
    "--task.events.rotors.params.motor_tau_s",
    "0.05",
    "0.05",
    "--task.events.latency.params.steps",
    "0",
    "0",
    "--task.events.position_bias.params.bias",
    "0.0",
    "--task.events.gyro_bias.params.bias",
    "0.0",
    "--task.events.disturbance.params.force_N",
    "0.0",
]
RECORD_S = 6.0


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    """{'nominal': bag, 'gapped': bag, 'policy': shipped quadrotor.onnx}, recorded concurrently."""
    pytest.importorskip("rclpy")
    from s2r_ros.processes import SHIPPED_POLICIES, policy_params, start_node, stop

    policy = SHIPPED_POLICIES / "quadrotor.onnx"
    procs, out = [], {"policy": policy}
    try:
        for name, gap in (("nominal", NOMINAL), ("gapped", GAPPED)):
            tmp = tmp_path_factory.mktemp(name)
            domain = random.randint(1, 200)
            procs.append((tmp, domain, {"sim": start_node("sim_robot_node", "quadrotor", tmp, domain, {"gap": gap})}))
        # the sim robot publishes first, so the recorder subscribes with its publishers' QoS
        for tmp, domain, p in procs:
            _wait_for_log(tmp, "sim_robot_node", "simulated", p["sim"], "the sim robot")
            out[tmp.name.rstrip("0123456789")] = tmp / "bag"
            p["rec"] = start_node(
                "recorder_node",
                "quadrotor",
                tmp,
                domain,
                {"bag": str(tmp / "bag"), "policy": str(policy), "discovery_period_s": 0.1, "flush_period_s": 0.2},
            )
        for tmp, domain, p in procs:
            _wait_for_log(tmp, "recorder_node", "recording /odom", p["rec"], "the recorder")
            p["ctl"] = start_node("policy_node", "quadrotor", tmp, domain, policy_params("quadrotor", policy))
        for tmp, _, p in procs:
            _wait_for_log(tmp, "policy_node", "mode running", p["ctl"], "the controller")
            # the recorder finds policy_io by polling the graph: record from when it has
            _wait_for_log(
                tmp, "recorder_node", "recording /policy_io", p["rec"], "the recorder subscribing to policy_io"
            )
        time.sleep(RECORD_S)
    finally:
        for _, _, p in procs:
            stop(*[p[k] for k in ("ctl", "sim", "rec") if k in p])
    for tmp, _, p in procs:
        assert p["rec"].returncode == 0, _log(tmp, "recorder_node")
    return out


def _wait_for_log(tmp: Path, node: str, text: str, proc, what: str) -> None:
    """Until the node's log says `text`, or the node exits."""
    from s2r_ros.processes import wait_for

    wait_for(lambda: text in _log(tmp, node) or proc.poll() is not None, 60, what=what)


def _log(tmp: Path, node: str) -> str:
    path = tmp / f"{node}.log"
    return path.read_text() if path.exists() else ""


@pytest.fixture(scope="module")
def no_dr_policy(tmp_path_factory) -> Path:
    """A quadrotor policy trained as the shipped one was (README command (a)), with every randomization
    range pinned to nominal."""
    run = tmp_path_factory.mktemp("no_dr") / "run"
    args = ["train", "--task", "quadrotor-hover", "--run-dir", str(run), "--no-progress", *NO_DR]
    assert main(args) == 0
    return run / "policy.onnx"


@pytest.mark.slow
def test_replay_agreement_gap_and_ranking(bags, no_dr_policy, tmp_path):
    shipped = bags["policy"]
    nominal = replay_bag(bags["nominal"], [shipped], tmp_path / "nominal", sim_episodes=20)
    gapped = replay_bag(bags["gapped"], [shipped, no_dr_policy], tmp_path / "gapped", sim_episodes=40)
    print(
        json.dumps(
            {
                "nominal_rows": nominal["rows"],
                "agreement": nominal["action_agreement"]["quadrotor"]["max_abs_diff"],
                "gap_nominal": {k: v["pos_m"]["norm"]["mean"] for k, v in nominal["dynamics_gap"]["k"].items()},
                "gap_gapped": {k: v["pos_m"]["norm"]["mean"] for k, v in gapped["dynamics_gap"]["k"].items()},
                "ranking": [(r["policy"], r["score"], r["sim_score"], r["shift"]) for r in gapped["ranking"]["order"]],
                "task": nominal["task_metrics"],
            },
            indent=1,
            default=str,
        )
    )
    assert nominal["rows"] > 200 and nominal["candidates"]["quadrotor"]["flew"]
    for m in (nominal, gapped):  # the policy that flew: its actions again, exactly
        assert m["action_agreement"]["quadrotor"]["max_abs_diff"] <= 1e-5
    assert gapped["action_agreement"][no_dr_policy.parent.name]["max_abs_diff"] > 1e-3
    g0, g1 = nominal["dynamics_gap"]["k"], gapped["dynamics_gap"]["k"]
    assert g0["1"]["pos_m"]["norm"]["mean"] < 1e-4 and g0["10"]["pos_m"]["norm"]["mean"] < 2e-3
    for k in ("10", "50"):
        assert g1[k]["pos_m"]["norm"]["mean"] > 5 * g0[k]["pos_m"]["norm"]["mean"], (g0[k], g1[k])
    order = gapped["ranking"]["order"]
    assert [r["policy"] for r in order] == ["quadrotor", no_dr_policy.parent.name]
    assert order[0]["sim_score"] > order[1]["sim_score"]
    assert nominal["task_metrics"]["crashes"] == 0 and nominal["task_metrics"]["mean_pos_error_m"] < 0.2
    for name in ("report.html", "metrics.json", "actions.png", "agreement_shift.png", "dynamics_gap.png"):
        assert (tmp_path / "gapped" / name).is_file(), name


@pytest.mark.slow
def test_truncated_bag_replays_to_its_last_complete_record(bags, tmp_path):
    src = bags["nominal"]
    cut = tmp_path / "cut"
    cut.mkdir()
    data = next(src.glob("*.mcap")).read_bytes()
    (cut / "cut_0.mcap").write_bytes(data[: len(data) * 2 // 3])
    spec_policy = bags["policy"]
    from deploy.onnx_policy import OnnxPolicy
    from replay.bag import BagReader
    from sim.evaluate import load_policy

    reader = BagReader(cut)
    assert not reader.complete and reader.notes
    spec = OnnxPolicy(spec_policy).spec
    cand = load_candidate(spec_policy, spec)
    io = policy_io_pass(reader, spec, [cand], load_policy(spec_policy)[1])
    full = policy_io_pass(BagReader(src), spec, [cand], load_policy(spec_policy)[1])
    assert 0 < io["rows"] < full["rows"] and io["action_agreement"]["quadrotor"]["max_abs_diff"] <= 1e-5
    assert dynamics_pass(reader, spec, load_policy(spec_policy)[1], (1, 10))["windows"] > 0


@pytest.mark.slow
def test_cli_end_to_end(bags, tmp_path, capsys):
    out = tmp_path / "report"
    assert (
        main(
            [
                "replay",
                str(bags["gapped"]),
                "--policy",
                str(bags["policy"]),
                "--out",
                str(out),
                "--k",
                "1",
                "10",
                "--episodes",
                "10",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "report.html" in printed and "action agreement" in printed and "dynamics gap k= 10" in printed
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["dynamics_gap"]["k"]) == {"1", "10"} and "<img" in (out / "report.html").read_text()


def _small_bag(path: Path, topics: tuple[str, ...]) -> None:
    from s2r_ros.processes import SHIPPED_POLICIES

    from deploy.onnx_policy import read_spec

    spec = read_spec(SHIPPED_POLICIES / "quadrotor.onnx")
    with BagWriter(path, {"policy_spec": spec.to_json()}) as bag:
        for i in range(5):
            if "/odom" in topics:
                bag.write_msg(
                    "/odom", "nav_msgs/msg/Odometry", {"pose": {"pose": {"orientation": {"w": 1.0}}}}, 10**7 * i
                )
            if "/policy_io" in topics:
                dims = [
                    {"label": "obs", "size": spec.obs_dim, "stride": 0},
                    {"label": "action", "size": 4, "stride": spec.obs_dim},
                ]
                bag.write_msg(
                    "/policy_io",
                    "std_msgs/msg/Float64MultiArray",
                    {"layout": {"dim": dims}, "data": [0.0] * (spec.obs_dim + 4)},
                    10**7 * i + 1,
                )


def test_missing_topic_and_field_are_named_errors(tmp_path, capsys):
    from s2r_ros.processes import SHIPPED_POLICIES

    policy = SHIPPED_POLICIES / "quadrotor.onnx"
    _small_bag(tmp_path / "no_io", ("/odom",))
    with pytest.raises(ReplayError, match="topic /policy_io is not in bag"):
        replay_bag(tmp_path / "no_io", [policy], tmp_path / "out")
    assert main(["replay", str(tmp_path / "no_io"), "--policy", str(policy), "--out", str(tmp_path / "out")]) == 2
    assert "topic /policy_io is not in bag" in capsys.readouterr().err
    _small_bag(tmp_path / "no_fields", ("/odom", "/policy_io"))
    with pytest.raises(ReplayError, match=r"policy_io has no field\(s\) \['command', 'timing'\]"):
        replay_bag(tmp_path / "no_fields", [policy], tmp_path / "out")


def test_policy_io_pass_in_blocks_matches_per_row_inference(tmp_path, monkeypatch):
    """A quadruped rollout as the bench records it (actions computed one row at a time): the batched
    inference reproduces each row within 1e-6, and the block size changes no figure."""
    import numpy as np

    import replay.io_pass as io_pass
    from deploy.onnx_policy import OnnxPolicy
    from replay.bag import BagReader, policy_io_fields, stream_health
    from replay.bench import SHIPPED, record_rollout_bag
    from sim.evaluate import load_policy

    policy = SHIPPED / "quadruped.onnx"
    record_rollout_bag(policy, tmp_path / "bag", 3.0)
    spec = OnnxPolicy(policy).spec
    cand, cfg = load_candidate(policy, spec), load_policy(policy)[1]
    whole = policy_io_pass(BagReader(tmp_path / "bag"), spec, [cand], cfg)
    msgs = list(BagReader(tmp_path / "bag").messages(["/policy_io"]))
    assert whole["rows"] == len(msgs) == 150 and whole["action_agreement"][cand.name]["max_abs_diff"] <= 1e-6
    per_row = np.concatenate([cand.policy(policy_io_fields(m.msg)["obs"][None]) for m in msgs])
    np.testing.assert_allclose(whole["_plot"][cand.name], per_row, rtol=0, atol=1e-6)
    assert whole["health"]["policy_io_receive"] == dataclasses.asdict(
        stream_health([m.log_time_ns for m in msgs], 1 / spec.control_hz)
    )
    monkeypatch.setattr(io_pass, "CHUNK_ROWS", 7)
    blocks = policy_io_pass(BagReader(tmp_path / "bag"), spec, [cand], cfg)
    assert blocks["health"] == whole["health"]
    for key in ("action_agreement", "shift", "task_metrics"):
        assert _leaves(blocks[key]) == pytest.approx(_leaves(whole[key]), rel=1e-9, abs=1e-12), key


def _leaves(tree) -> dict:
    """{path: value} of a nested dict's numbers, for comparing two results with a tolerance."""
    if isinstance(tree, dict):
        return {f"{k}/{p}": v for k, sub in tree.items() for p, v in _leaves(sub).items()}
    return {"": tree} if isinstance(tree, (int, float)) else {}


def test_nominal_cfg_pins_every_range():
    from sim.tasks import default_cfg

    cfg = nominal_cfg(default_cfg("arm-reach"))
    e = {name: t.params for name, t in cfg.events.items()}
    assert (
        e["joints"]["damping_scale"] == (1.0, 1.0) and e["payload"]["mass_kg"] == (0.0, 0.0) and cfg.model_variants == 1
    )
    assert e["gains"]["kp_scale"] == (1.0, 1.0) and e["latency"]["steps"] == (0, 0) and e["encoder_bias"]["bias"] == 0.0
    assert e["encoder_bias"]["term"] == "joint_pos_rel" and cfg.noise.joint_pos_rad == 0.0
    walk = nominal_cfg(default_cfg("quadruped-walk")).events["push"].params
    assert walk["vel_mps"] == 0.0 and walk["interval_s"] == 8.0


def _quadruped_gap(tmp_path: Path, name: str, actuators: dict | None = None) -> dict:
    """The dynamics gap (k = 1, 10) of a 4 s quadruped rollout recorded with nominal parameters, the
    actuator randomization pinned to `actuators` when given (a reality gap)."""
    from deploy.onnx_policy import OnnxPolicy
    from replay.bag import BagReader
    from replay.bench import SHIPPED, record_rollout_bag
    from sim.evaluate import load_policy

    policy = SHIPPED / "quadruped.onnx"
    cfg = load_policy(policy)[1]
    rec = nominal_cfg(cfg)
    if actuators:
        gains = rec.events["gains"]
        rec = dataclasses.replace(
            rec, events={**rec.events, "gains": dataclasses.replace(gains, params={**gains.params, **actuators})}
        )
    record_rollout_bag(policy, tmp_path / name, 4.0, rec)
    return dynamics_pass(BagReader(tmp_path / name), OnnxPolicy(policy).spec, cfg, (1, 10))


def test_quadruped_dynamics_gap_with_floating_base(tmp_path):
    """The env with nominal parameters is the simulator that recorded the nominal bag: replayed from
    the logged joint and base state (odom paired by stamp), it reproduces the log (the joint readings
    are float32, hence ~1e-7 rad); motors at 80 % strength make every error grow by orders of magnitude."""
    nominal = _quadruped_gap(tmp_path, "nominal")
    gapped = _quadruped_gap(tmp_path, "gapped", {"motor_strength": (0.8, 0.8)})
    mean = {
        name: {k: {q: v["norm"]["mean"] for q, v in d.items() if q != "horizon_s"} for k, d in g["k"].items()}
        for name, g in (("nominal", nominal), ("gapped", gapped))
    }
    print(json.dumps(mean, indent=1))
    assert nominal["windows"] == 200 - 10  # every row paired with its odom, no reset in 4 s
    assert nominal["base_axes"] == ["x", "y", "z"] and set(mean["nominal"]["1"]) == {
        "joint_pos_rad",
        "joint_vel_radps",
        "base_pos_m",
        "base_vel_mps",
        "base_att_rad",
    }
    g0, g1 = mean["nominal"], mean["gapped"]
    assert g0["1"]["base_pos_m"] < 1e-7 and g0["10"]["base_pos_m"] < 1e-6 and g0["1"]["base_att_rad"] < 1e-6
    assert g0["1"]["joint_pos_rad"] < 1e-6 and g0["10"]["joint_pos_rad"] < 1e-6
    for q, floor in (("base_pos_m", 1e-3), ("base_vel_mps", 1e-2), ("base_att_rad", 1e-3), ("joint_pos_rad", 1e-2)):
        assert g1["10"][q] > max(floor, 1000 * g0["10"][q]), (q, g0["10"], g1["10"])


def test_quadruped_bag_without_odom_names_it(tmp_path):
    from deploy.onnx_policy import OnnxPolicy
    from replay.bag import BagReader
    from replay.bench import ARRAY, JS, SHIPPED
    from sim.evaluate import load_policy

    policy = SHIPPED / "quadruped.onnx"
    spec = OnnxPolicy(policy).spec
    with BagWriter(tmp_path / "bag", {"policy_spec": spec.to_json()}) as bag:
        bag.write_msg("/joint_commands", ARRAY, {"data": [0.0] * (3 * spec.action_dim)}, 1)
        bag.write_msg("/joint_states", JS, {"name": list(spec.action.names), "position": [0.0] * spec.action_dim}, 2)
    with pytest.raises(ReplayError, match="topic /odom is not in bag .*floating base"):
        dynamics_pass(BagReader(tmp_path / "bag"), spec, load_policy(policy)[1], (1, 10))


def test_base_state_matcher_pairs_the_nearest_odometry_within_tolerance():
    import numpy as np

    from replay.gap_pass import BaseStateMatcher

    m = BaseStateMatcher(tol_s=0.002)
    for k in range(5):  # odometry at 200 Hz, stamped on its own ticks
        m.add(0.005 * k + 0.001, np.full(13, float(k)))
    rows = np.array([0.0, 0.0052, 0.0099, 0.03, 0.0155])  # joint states, not in order with the odometry
    got = m.fill(rows)
    np.testing.assert_array_equal(got[:, 0], [0.0, 1.0, 2.0, np.nan, 3.0])  # 0.03: no odometry within 2 ms
    m.prune(0.0155)
    assert m.t_s == [0.016, 0.021] and np.isnan(m.fill(np.array([0.0]))).all()  # the rows before are done


FOREIGN_MAPPING = {  # this stack's own sensor topics, read as another stack's bag is: no policy_io
    "description": "s2r's sim robot topics through a bag mapping",
    "format": "bag",
    "rate_hz": 100,
    "time": {"topic": "/odom", "fields": ["header.stamp"]},
    "quantities": {
        "pos_w_m": {"topic": "/odom", "fields": [f"pose.pose.position.{a}" for a in "xyz"]},
        "quat_wxyz": {"topic": "/odom", "fields": [f"pose.pose.orientation.{a}" for a in "wxyz"]},
        "lin_vel_b_mps": {
            "topic": "/odom",
            "fields": [f"twist.twist.linear.{a}" for a in "xyz"],
        },  # REP 105: body frame
        "ang_vel_b_radps": {"topic": "/imu", "fields": [f"angular_velocity.{a}" for a in "xyz"]},
        "target_pos_w_m": {"topic": "/target", "fields": [f"point.{a}" for a in "xyz"]},
    },
}


@pytest.mark.slow
def test_foreign_bag_mapping_scores_as_policy_io_does(bags, no_dr_policy, tmp_path):
    """The gapped flight read as another stack's bag (sensor topics through a mapping, observations
    rebuilt by each candidate's own pipeline): shift per term and ranking as from the logged policy_io."""
    import yaml

    from replay.foreign import score_foreign_log

    mapping = tmp_path / "ours.yaml"
    mapping.write_text(yaml.safe_dump(FOREIGN_MAPPING))
    policies = [bags["policy"], no_dr_policy]
    native = replay_bag(bags["gapped"], policies, tmp_path / "native", dynamics=False, sim_episodes=20)
    from replay.bag import BagReader

    reader = BagReader(bags["gapped"])
    t_odom = next(m.msg.header.stamp for m in reader.messages(["/odom"]))
    io_s = [m.log_time_ns / 1e9 for m in reader.messages(["/policy_io"])]
    t0 = t_odom.sec + 1e-9 * t_odom.nanosec
    window = (io_s[0] - t0, io_s[-1] - t0)  # while the controller ran: the sim robot publishes from its start
    foreign = score_foreign_log(
        bags["gapped"], mapping, policies, tmp_path / "foreign", sim_episodes=20, window_s=window
    )
    shifts = {
        c: {
            t: [round(native["shift"][c]["terms"][t]["rms_z"], 3), round(foreign["shift"][c]["terms"][t]["rms_z"], 3)]
            for t in native["shift"][c]["terms"]
        }
        for c in native["shift"]
    }
    print(
        json.dumps(
            {"rms_z native, foreign": shifts, "rows": [native["rows"], foreign["rows"]], "starts": foreign["starts"]}
        )
    )
    assert abs(foreign["rows"] - native["rows"]) < 0.1 * native["rows"]
    for c, terms in shifts.items():
        for t, (a, b) in terms.items():
            # policy_io holds the last actions of the policy that flew; the foreign pass feeds each
            # candidate its own, as that candidate would have run
            if t != "last_action" or c == "quadrotor":
                assert b == pytest.approx(a, rel=0.05), (c, t)
    assert [r["policy"] for r in foreign["ranking"]["order"]] == [r["policy"] for r in native["ranking"]["order"]]
    assert (tmp_path / "foreign" / "report.html").is_file()


def test_quadruped_tracking_from_odometry_and_cmd_vel(tmp_path):
    """The walking robot's linear-velocity tracking computed from the log (/cmd_vel against /odom's
    body twist, settled steps, while the controller ran) is the env's own `s2r eval` measure."""
    from deploy.onnx_policy import OnnxPolicy
    from replay.bag import BagReader
    from replay.bench import SHIPPED, record_rollout_bag
    from replay.io_pass import base_tracking_pass
    from replay.task_metrics import TaskMetrics
    from sim.evaluate import load_policy

    policy = SHIPPED / "quadruped.onnx"
    reference = record_rollout_bag(policy, tmp_path / "bag", 6.0)
    spec, cfg = OnnxPolicy(policy).spec, load_policy(policy)[1]
    cand = load_candidate(policy, spec)
    task = TaskMetrics(spec, cfg)
    io = policy_io_pass(BagReader(tmp_path / "bag"), spec, [cand], cfg, task)
    assert task.base_velocity_settle_s == cfg.eval_settle_s and io["task_metrics"]["mean_lin_vel_error_mps"] is None
    assert base_tracking_pass(BagReader(tmp_path / "bag"), task, io["_span_ns"])
    got = task.summary(1 / spec.control_hz)
    print(got, reference)
    assert got["lin_vel_samples"] >= 4 * 200  # 4 odometry messages per control step, 4 s after the settle time
    assert got["mean_lin_vel_error_mps"] == pytest.approx(reference["mean_lin_vel_error_mps"], rel=0.02)
