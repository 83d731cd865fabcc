"""PPO training, checkpoints, resume, export parity, eval: the spine end to end."""

import csv
import pickle

import numpy as np
import pytest
import torch

from config.validate import override
from deploy.onnx_policy import OnnxPolicy, PolicyLoadError, read_metadata, read_spec
from deploy.spec import SpecError
from policies.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from policies.export import WARNING_KEY, ExportError, export_checkpoint, export_onnx, model_from_checkpoint
from policies.runner import Runner, TrainCfg
from policies.threads import UpdateThreads
from sim.evaluate import evaluate
from sim.tasks import default_cfg

SMALL = dict(num_envs=64, max_iterations=4, save_interval=2)


def small_run(tmp_path, name="run", **kw) -> Runner:
    cfg = TrainCfg(**{**SMALL, **kw})
    cfg = override(cfg, "ppo.num_steps", 8)
    return Runner(cfg, default_cfg(cfg.task), tmp_path / name)


def test_run_dir_has_everything(tmp_path):
    r = small_run(tmp_path)
    ckpt = r.learn(progress=False)
    run = tmp_path / "run"
    for name in ("config.json", "metrics.csv", "learning_curve.png", "model_2.pt", "model_4.pt", "model_last.pt"):
        assert (run / name).is_file(), name
    assert any((run / "tensorboard").iterdir())
    rows = (run / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 4 and rows[0].startswith("iteration,env_steps,time_s")
    assert load_checkpoint(ckpt)["iteration"] == 4
    r.env.close()
    again = small_run(tmp_path, max_iterations=2)  # a new run in the same folder starts new logs
    again.learn(progress=False)
    assert len((run / "metrics.csv").read_text().splitlines()) == 1 + 2
    assert len(list((run / "tensorboard").iterdir())) == 1
    again.env.close()


def test_resume_continues_exactly(tmp_path):
    straight = small_run(tmp_path, "straight")
    straight.learn(progress=False)
    resumed = Runner(
        straight.cfg,
        straight.task_cfg,
        tmp_path / "resumed",
        resume=tmp_path / "straight" / "model_2.pt",
    )
    assert resumed.iteration == 2
    resumed.learn(progress=False)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    straight.env.close()
    resumed.env.close()


def test_the_update_gives_the_same_weights_on_one_thread_or_all(tmp_path):
    """The runner picks the update's thread count by timing it (policies/threads.py): the choice must not
    change what is learned. The walk task's networks, on hover's env (cheaper to build)."""
    weights = []
    for threads in (1, 2):
        cfg = TrainCfg(**{**SMALL, "max_iterations": 2, "num_envs": 256, "update_threads": threads})
        for key, value in (("num_steps", 8), ("actor_hidden", (128, 128, 128)), ("critic_hidden", (256, 128, 128))):
            cfg = override(cfg, f"ppo.{key}", value)
        r = Runner(cfg, default_cfg(cfg.task), tmp_path / f"threads{threads}")
        r.learn(progress=False)
        r.env.close()
        weights.append(r.model.state_dict())
        rows = list(csv.DictReader((tmp_path / f"threads{threads}" / "metrics.csv").open()))
        assert [row["update_threads"] for row in rows] == [str(threads)] * 2
    for k in weights[0]:
        assert torch.equal(weights[0][k], weights[1][k]), k


def test_the_faster_thread_count_is_kept_and_the_slower_retimed_at_growing_intervals():
    choice = UpdateThreads(0)
    cores = choice.candidates[-1]
    if cores == 1:
        pytest.skip("one core: nothing to choose")
    seconds = {1: 1.0, cores: 2.0}  # one thread is faster
    picked = []
    for _ in range(40):
        picked.append(choice.next())
        choice.record(seconds[choice.current])
    assert picked[:2] == [1, cores]  # each timed once
    retimed = [i for i, n in enumerate(picked) if n == cores][1:]
    gaps = np.diff(retimed).tolist()
    assert gaps == sorted(gaps) and gaps[-1] > gaps[0], picked  # ever rarer
    seconds = {1: 3.0, cores: 2.0}  # the machine changed: one thread became slower
    picked = []
    for _ in range(10):
        picked.append(choice.next())
        choice.record(seconds[choice.current])
    assert picked[-5:] == [cores] * 5, picked


def test_resume_with_another_env_count_starts_fresh_episodes(tmp_path):
    r = small_run(tmp_path, max_iterations=2)
    ckpt = r.learn(progress=False)
    r.env.close()
    more = TrainCfg(**{**SMALL, "num_envs": 96, "max_iterations": 3})
    more = override(more, "ppo.num_steps", 8)
    resumed = Runner(more, default_cfg(more.task), tmp_path / "more", resume=ckpt)
    assert resumed.iteration == 2 and resumed.obs is None
    resumed.learn(progress=False)
    assert resumed.iteration == 3
    resumed.env.close()


def test_corrupt_or_foreign_checkpoints_are_refused(tmp_path):
    r = small_run(tmp_path, max_iterations=2)
    good = r.learn(progress=False)
    r.env.close()
    data = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(data[: len(data) // 2])
    (tmp_path / "garbage.pt").write_bytes(b"\x00not a checkpoint" * 100)

    class Evil:
        def __reduce__(self):
            return (print, ("code ran",))

    (tmp_path / "evil.pt").write_bytes(pickle.dumps({"format": "s2r-checkpoint-v1", "x": Evil()}))
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    for name, message in [
        ("truncated.pt", "not a loadable"),
        ("garbage.pt", "not a loadable"),
        ("evil.pt", "not a loadable"),
        ("foreign.pt", "not an s2r checkpoint"),
        ("missing.pt", "not found"),
    ]:
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(tmp_path / name)


def test_resume_into_a_different_network_is_refused(tmp_path):
    r = small_run(tmp_path, max_iterations=2)
    ckpt = r.learn(progress=False)
    r.env.close()
    other = override(TrainCfg(**SMALL), "ppo.actor_hidden", (32,))
    with pytest.raises(CheckpointError, match="model_last.pt does not match"):
        Runner(other, default_cfg(other.task), tmp_path / "other", resume=ckpt)


def test_export_parity_metadata_and_eval(tmp_path):
    r = small_run(tmp_path, max_iterations=2)
    ckpt = r.learn(progress=False)
    r.env.close()
    onnx_path, report = export_checkpoint(ckpt)
    assert report["parity_max_abs_diff_random"] <= 1e-5 and report["parity_max_abs_diff_rollout"] <= 1e-5
    spec = read_spec(onnx_path)
    assert spec == json_spec(onnx_path.with_suffix(".json"))
    policy = OnnxPolicy(onnx_path)
    obs = np.random.default_rng(0).standard_normal((5, spec.obs_dim)).astype(np.float32)
    model, _, _ = model_from_checkpoint(load_checkpoint(ckpt))
    with torch.no_grad():
        expected = model.action_mean(torch.from_numpy(obs)).numpy()
    np.testing.assert_allclose(policy(obs), expected, atol=1e-5)
    # mismatched robot config: refuse
    other = override(default_cfg("quadrotor-hover"), "action_history", 8)
    from sim.tasks import make_env

    env = make_env("quadrotor-hover", 1, other)
    with pytest.raises(SpecError, match="obs_dim"):
        OnnxPolicy(onnx_path, expected=env.spec)
    env.close()
    result = evaluate(onnx_path, episodes=100)
    assert result["episodes"] == 100 and 0.0 <= result["success_rate"] <= 1.0
    assert result["crash_rate"] + result["success_rate"] <= 1.0 + 1e-9


def json_spec(path):
    from deploy.spec import PolicySpec

    return PolicySpec.from_json(path.read_text())


def test_export_refuses_a_broken_parity(tmp_path, monkeypatch):
    r = small_run(tmp_path, max_iterations=1)
    ckpt = r.learn(progress=False)
    r.env.close()
    model, spec, _ = model_from_checkpoint(load_checkpoint(ckpt))
    import deploy.onnx_policy as op

    monkeypatch.setattr(
        op.OnnxPolicy, "__call__", lambda self, obs: np.zeros((len(obs), spec.action_dim), np.float32) + 1
    )
    with pytest.raises(ExportError, match="parity failed"):
        export_onnx(model, spec, tmp_path / "p.onnx")


def test_onnx_without_spec_or_not_onnx_is_refused(tmp_path):
    (tmp_path / "x.onnx").write_bytes(b"not onnx at all")
    with pytest.raises(PolicyLoadError, match="not a readable ONNX|no 's2r.policy_spec'"):
        OnnxPolicy(tmp_path / "x.onnx")
    with pytest.raises(PolicyLoadError, match="not found"):
        OnnxPolicy(tmp_path / "none.onnx")


@pytest.mark.slow
def test_training_improves_hover_within_a_short_budget(tmp_path):
    """A real improvement: from the first iterations to the last, episodes last longer and return more."""
    cfg = TrainCfg(num_envs=512, max_iterations=60, save_interval=1000)
    r = Runner(cfg, default_cfg(cfg.task), tmp_path / "learn")
    r.learn(progress=False)
    r.env.close()
    import csv

    rows = list(csv.DictReader(open(tmp_path / "learn" / "metrics.csv")))

    def mean(key, rs):
        vals = [float(x[key]) for x in rs if x.get(key) not in ("", None)]
        return sum(vals) / len(vals)

    early, late = rows[2:10], rows[-8:]
    assert mean("episode/length_s", late) > 1.5 * mean("episode/length_s", early)
    assert mean("episode/return", late) > mean("episode/return", early) + 0.3


def test_hover_success_definition():
    """Success: no crash, and within the radius at every step from 2 s to the end."""
    from sim.tasks.quadrotor_hover import hover_summary

    cfg = default_cfg("quadrotor-hover")  # 100 Hz, settle after 200 steps, 500-step episodes
    steps, n = 500, 4
    err = np.full((steps, n), 0.05)
    err[:200, :] = 0.4  # far off while settling: allowed
    err[300, 1] = 0.11  # one late excursion beyond 0.1 m: fails
    alive = np.ones((steps, n), bool)
    alive[150:, 3] = False  # ended before settling
    crashed = np.array([False, False, True, True])
    m = hover_summary(cfg, 100.0, err, alive, crashed)
    assert m["success_rate"] == 0.25  # only env 0
    assert m["crash_rate"] == 0.5
    assert abs(m["mean_pos_error_m"] - (0.05 * 599 + 0.11) / 600) < 1e-9


def test_time_limit_stops_training_and_saves(tmp_path):
    r = small_run(tmp_path, max_iterations=1000, time_limit_s=0.01)
    ckpt = r.learn(progress=False)
    r.env.close()
    iteration = load_checkpoint(ckpt)["iteration"]
    assert 1 <= iteration < 5
    onnx_path, _ = export_checkpoint(ckpt)  # a partial policy, and its metadata says so
    meta = read_metadata(onnx_path)
    assert meta["s2r.iteration"] == str(iteration) and meta["s2r.stopped"] == "time_limit"
    assert meta[WARNING_KEY].startswith(f"exported from iteration {iteration} of 1000: training stopped at its time")


def test_export_records_where_the_policy_stands_in_its_run(tmp_path):
    r = small_run(tmp_path)  # 4 iterations: model_2.pt, model_4.pt, model_last.pt
    last = r.learn(progress=False)
    r.env.close()
    meta = read_metadata(export_checkpoint(last)[0])
    assert (meta["s2r.iteration"], meta["s2r.max_iterations"], meta["s2r.stopped"]) == ("4", "4", "completed")
    assert WARNING_KEY not in meta
    older = read_metadata(export_checkpoint(last.parent / "model_2.pt", tmp_path / "old.onnx")[0])[WARNING_KEY]
    assert older.startswith("exported from iteration 2 of 4: training was still running when this checkpoint")
    assert "model_2.pt (iteration 2) is older than model_" in older and "(iteration 4)" in older


def test_resume_truncates_the_logs_to_its_checkpoint(tmp_path):
    """Rows and TensorBoard scalars after the checkpoint's iteration are trained again: each appears once."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    r = small_run(tmp_path)
    r.learn(progress=False)
    r.env.close()
    run = tmp_path / "run"
    with open(run / "metrics.csv", "a") as f:
        f.write("5,1")  # a row cut short by a kill
    resumed = Runner(r.cfg, r.task_cfg, run, resume=run / "model_2.pt")
    resumed.learn(progress=False)
    resumed.env.close()
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert [row["iteration"] for row in rows] == ["1", "2", "3", "4"]
    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    scalars = events.Scalars("time_s")
    assert [e.step for e in scalars] == [int(row["env_steps"]) for row in rows]
    assert [round(e.value, 3) for e in scalars] == pytest.approx([float(row["time_s"]) for row in rows])


def test_a_corrupted_checkpoint_is_named(tmp_path):
    r = small_run(tmp_path, max_iterations=2)
    good = r.learn(progress=False)
    r.env.close()
    data = bytearray(good.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(255 - b for b in data[middle : middle + 16])
    flipped = tmp_path / "flipped" / "model_last.pt"
    flipped.parent.mkdir()
    flipped.write_bytes(data)
    with pytest.raises(CheckpointError, match=r"flipped/model_last.pt is corrupt: its entry .* fails its CRC-32"):
        load_checkpoint(flipped)


def rewritten(tmp_path, good, name, change) -> str:
    """A copy of checkpoint `good` with `change` applied, saved whole (so every CRC is right)."""
    ckpt = torch.load(good, weights_only=True)
    change(ckpt)
    save_checkpoint(tmp_path / name, ckpt)
    return str(tmp_path / name)


def first_weight(ckpt) -> str:
    return next(k for k, v in ckpt["model"].items() if v.dim() == 2)


def test_checkpoint_contents_are_checked_before_use(tmp_path):
    r = small_run(tmp_path, max_iterations=2)
    good = r.learn(progress=False)
    r.env.close()

    def nan_weight(c):
        c["model"][first_weight(c)][0, 0] = float("nan")

    def bad_rng(c):
        c["rng"]["ppo"] = torch.zeros_like(c["rng"]["ppo"])  # "Invalid mt19937 state"

    def bad_shape(c):
        w = first_weight(c)
        c["model"][w] = torch.zeros(c["model"][w].shape[0] + 1, c["model"][w].shape[1])

    def text_iteration(c):
        c["iteration"] = "2"

    for name, change, message in [
        ("nan.pt", nan_weight, r"nan.pt is not usable: model .* holds NaN or inf"),
        ("iteration.pt", text_iteration, r"iteration.pt is not usable: 'iteration' is a str"),
    ]:
        with pytest.raises(CheckpointError, match=message):
            load_checkpoint(rewritten(tmp_path, good, name, change))
    with pytest.raises(CheckpointError, match=r"rng.pt: its PPO random generator state is invalid \(Invalid mt19937"):
        Runner(r.cfg, r.task_cfg, tmp_path / "resumed", resume=rewritten(tmp_path, good, "rng.pt", bad_rng))
    shape = rewritten(tmp_path, good, "shape.pt", bad_shape)
    with pytest.raises(CheckpointError, match=r"shape.pt does not match this task and network"):
        Runner(r.cfg, r.task_cfg, tmp_path / "resumed", resume=shape)
    with pytest.raises(CheckpointError, match=r"shape.pt: its weights do not match the network its config describes"):
        export_checkpoint(shape)
