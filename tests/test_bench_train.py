"""`s2r bench train --task T` (learners mode): the tasks' success bars, the checkpoint scan to the bar on a
tiny real run, and bad arguments named before anything runs."""

import csv
import io
import json
import math
from contextlib import redirect_stdout

import pytest

from policies.bench import LearnersBenchCfg, check_learners_cfg, checkpoints, time_to_bar
from s2r.cli import main
from sim.tasks import TASKS, Bound, SuccessBar


def test_each_task_owns_the_bar_of_issue_17():
    hover, walk, arm = (TASKS[t].bar for t in ("quadrotor-hover", "quadruped-walk", "arm-reach"))
    assert str(hover) == str(arm) == "success_rate >= 0.95"
    assert str(walk) == "mean_lin_vel_error_mps <= 0.15 and fall_rate < 0.02"
    assert hover.met({"success_rate": 0.95}) and not hover.met({"success_rate": 0.945})
    assert walk.met({"mean_lin_vel_error_mps": 0.15, "fall_rate": 0.019})
    assert not walk.met({"mean_lin_vel_error_mps": 0.10, "fall_rate": 0.02})  # falls: strictly below 2 %
    assert not walk.met({"mean_lin_vel_error_mps": math.nan, "fall_rate": 0.0})  # nobody walked long enough


def test_shortfall_ranks_the_checkpoints_that_miss():
    walk = TASKS["quadruped-walk"].bar
    assert walk.shortfall({"mean_lin_vel_error_mps": 0.1, "fall_rate": 0.0}) == 0
    near = walk.shortfall({"mean_lin_vel_error_mps": 0.18, "fall_rate": 0.02})  # 0.2 of the error bound
    far = walk.shortfall({"mean_lin_vel_error_mps": 0.15, "fall_rate": 0.05})  # 1.5 times the fall bound
    assert 0 < near < far < walk.shortfall({"mean_lin_vel_error_mps": math.nan, "fall_rate": 0.0}) == math.inf


@pytest.fixture(scope="module")
def tiny_bench(tmp_path_factory):
    """The whole command, in one cheap run: PPO on hover, 64 envs, stopped by a 1 s budget after a few
    iterations, checkpoints every 2 (and model_last.pt where it stopped), 16 evaluation episodes each; the
    ceiling as the bench measures it. The run is kept (--run-dir) for the scan tests."""
    tmp = tmp_path_factory.mktemp("bench")
    args = ["--algos", "ppo", "--time-budget-s", "1", "--num-envs", "64", "--eval-every", "2", "--episodes", "16"]
    args += ["--backend", "cpu", "--run-dir", str(tmp), "--json", str(tmp / "bench.json")]
    with redirect_stdout(io.StringIO()) as out:
        assert main(["bench", "train", "--task", "quadrotor-hover", *args]) == 0
    with open(tmp / "ppo" / "metrics.csv", newline="") as f:
        rows = {int(r["iteration"]): r for r in csv.DictReader(f)}
    return out.getvalue(), json.loads((tmp / "bench.json").read_text()), tmp / "ppo", rows


def test_the_bench_prints_each_learner_beside_the_ceiling(tiny_bench):
    out, figures, _, rows = tiny_bench
    assert "bar: success_rate >= 0.95 on 16 episodes" in out and "ceiling" in out
    assert "ppo      not within 1 s" in out and "best: success_rate" in out  # a second of PPO does not hover
    for when in ("before", "after"):
        assert figures[f"ceiling_{when}"]["mj_step_ceiling_per_s"] > 0
        assert figures[f"ceiling_{when}"]["num_envs"] == 512  # the task's default, whatever the learners'
    assert figures["scale_to_goal_ceiling"] == [
        figures[f"ceiling_{when}"]["mj_step_ceiling_per_s"] / 700_000 for when in ("before", "after")
    ]
    ppo = figures["learners"]["ppo"]
    assert not ppo["met"] and ppo["trained_iterations"] == max(rows) and ppo["trained_s"] >= 1.0


def test_a_bar_not_met_reports_the_best_checkpoint(tiny_bench):
    _, figures, run_dir, rows = tiny_bench
    r = figures["learners"]["ppo"]
    assert [e["iteration"] for e in r["evaluated"]] == [i for i, _ in checkpoints(run_dir)]
    assert [i for i, _ in checkpoints(run_dir)] == [i for i in sorted(rows) if i % 2 == 0 or i == max(rows)]
    assert r["at"] == min(r["evaluated"], key=lambda e: e["shortfall"])
    for e in r["evaluated"]:
        assert e["time_s"] == float(rows[e["iteration"]]["time_s"]) and 0 <= e["success_rate"] <= 1


def test_the_scan_stops_at_the_first_checkpoint_on_the_bar(tiny_bench):
    _, _, run_dir, rows = tiny_bench
    first = checkpoints(run_dir)[0][0]
    anything = SuccessBar((Bound("success_rate", ">=", 0.0),), goal_s=1.0)
    r = time_to_bar(run_dir, anything, episodes=16, backend="cpu")
    assert r["met"] and [e["iteration"] for e in r["evaluated"]] == [first]
    assert r["at"]["time_s"] == float(rows[first]["time_s"]) and r["at"]["env_steps"] == int(rows[first]["env_steps"])


@pytest.mark.parametrize(
    "args, message",
    [
        (["--algos", "ppo", "dqn"], "bench train.algos: must name one or more of ppo, sac, td3, each once"),
        (["--algos", "td3", "td3"], "bench train.algos: must name one or more"),
        (["--time-budget-s", "0"], "bench train.time_budget_s: must be > 0"),
        (["--eval-every", "0"], "bench train.eval_every: must be >= 1"),
        (["--episodes", "0"], "bench train.episodes: must be > 0"),
        (["--num-envs", "0"], "bench train.num_envs: must be >= 1"),
        (["--task", "fly"], "unknown task 'fly'"),
        (["--iterations", "3"], "--iterations: not an option of s2r bench train without --nproc"),
        (["--nproc", "2", "--time-budget-s", "5", "--seed", "0"], "--time-budget-s, --seed: not an option of"),
        (["--nproc", "1"], "--nproc must be >= 2"),
    ],
)
def test_bad_arguments_are_named_before_anything_runs(tmp_path, capsys, args, message):
    assert main(["bench", "train", *args, "--json", str(tmp_path / "b.json")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "b.json").exists()


def test_a_kept_run_folder_in_use_is_refused(tmp_path, capsys):
    (tmp_path / "td3").mkdir()  # its old checkpoints would be taken for the new run's
    assert main(["bench", "train", "--algos", "ppo", "td3", "--run-dir", str(tmp_path)]) == 2
    assert f"bench train.run_dir: {tmp_path / 'td3'} exists" in capsys.readouterr().err
    assert not (tmp_path / "ppo").exists()


def test_an_off_policy_learner_that_could_not_start_is_named_before_the_first_runs():
    from config.validate import ConfigError

    with pytest.raises(ConfigError, match="train.sac.buffer_size"):
        check_learners_cfg(LearnersBenchCfg(algos=("ppo", "td3"), num_envs=1_000_000))
