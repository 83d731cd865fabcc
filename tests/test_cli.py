"""The `s2r` command as a user runs it: real processes, real files, clear errors on bad input."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def s2r(*args, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "s2r.cli", *args], capture_output=True, text=True, cwd=cwd or REPO, timeout=600
    )


def test_tasks_lists_quadrotor_hover():
    r = s2r("tasks")
    assert r.returncode == 0 and "quadrotor-hover" in r.stdout.split()


def test_unknown_task_lists_the_tasks(tmp_path):
    r = s2r("train", "--task", "quadrotor-dance", "--run-dir", str(tmp_path / "r"))
    assert r.returncode == 2
    assert "unknown task 'quadrotor-dance'" in r.stderr and "quadrotor-hover" in r.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize(
    "setting, field",
    [
        (["--ppo.num_steps", "0"], "ppo.num_steps"),
        (["--ppo.learning_rate", "fast"], "ppo.learning_rate"),
        (["--ppo.activation", "sigmoid"], "ppo.activation"),
        (["--task.events.mass.params.scale", "1.2", "0.8"], "task.events.mass.params.scale"),
        (["--task.rewards.flips.weight", "1.0"], "task.rewards.flips.weight"),
        (["--task.rewards.tilt.func", "backflip"], "task.rewards.tilt.func: no reward 'backflip'"),
        (["--task.no_such_field", "1"], "task.no_such_field"),
        (["17"], "unexpected argument '17'"),
    ],
)
def test_bad_config_value_names_the_field(tmp_path, setting, field):
    r = s2r("train", *setting, "--run-dir", str(tmp_path / "r"), "--max-iterations", "1")
    assert r.returncode == 2, r.stderr
    assert field in r.stderr
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "r" / "metrics.csv").exists()


def test_config_fields_are_listed_and_set_by_name(tmp_path):
    r = s2r("train", "--task", "quadruped-walk", "--fields")
    assert r.returncode == 0 and "--ppo.num_steps" in r.stdout and "--task.rewards.track_lin_vel.weight" in r.stdout
    run = tmp_path / "r"
    r = s2r(
        "train",
        "--task",
        "arm-reach",
        "--run-dir",
        str(run),
        "--num-envs",
        "8",
        "--max-iterations",
        "1",
        "--no-progress",
        "--no-export",
        "--ppo.num_steps",
        "4",
        "--task.rewards.joint_vel.weight",
        "-0.5",
        "--task.events.payload.params.mass_kg",
        "0.2",
        "0.3",
    )
    assert r.returncode == 0, r.stderr
    from policies.checkpoint import load_checkpoint

    saved = json.loads(load_checkpoint(run / "model_last.pt")["config"])
    assert saved["train"]["num_envs"] == 8 and saved["train"]["ppo"]["num_steps"] == 4
    assert saved["task"]["rewards"]["joint_vel"]["weight"] == -0.5 and saved["task"]["events"]["payload"]["params"][
        "mass_kg"
    ] == [0.2, 0.3]


def test_bad_num_envs_names_the_field(tmp_path):
    r = s2r("train", "--num-envs", "0", "--run-dir", str(tmp_path / "r"))
    assert r.returncode == 2 and "num_envs" in r.stderr


def test_unwritable_run_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = s2r("train", "--run-dir", str(blocker / "run"), "--max-iterations", "1")
    assert r.returncode == 2 and "not writable" in r.stderr
    assert "iterations" not in r.stdout


def test_corrupt_checkpoint_on_resume_and_export(tmp_path):
    bad = tmp_path / "model_last.pt"
    bad.write_bytes(b"PK\x03\x04 definitely not a checkpoint")
    for args in (("train", "--resume", str(bad)), ("export", str(tmp_path))):
        r = s2r(*args)
        assert r.returncode == 2 and "not a loadable s2r checkpoint" in r.stderr, r.stderr


def test_eval_without_policy_says_what_is_missing(tmp_path):
    r = s2r("eval", str(tmp_path))
    assert r.returncode == 2 and "no exported policy" in r.stderr


def test_bench_sim_prints_ratio_to_ceiling(tmp_path):
    out = tmp_path / "bench.json"
    r = s2r("bench", "sim", "--task", "quadrotor-hover", "--num-envs", "256", "--steps", "20", "--json", str(out))
    assert r.returncode == 0, r.stderr
    assert "raw mj_step ceiling" in r.stdout and "ratio env / ceiling" in r.stdout
    figures = json.loads(out.read_text())
    assert 0 < figures["ratio"] < 1.5 and figures["mj_step_ceiling_per_s"] > 0


@pytest.mark.slow
def test_train_export_eval_end_to_end(tmp_path):
    run = tmp_path / "run"
    r = s2r("train", "--run-dir", str(run), "--num-envs", "128", "--max-iterations", "3", "--no-progress")
    assert r.returncode == 0, r.stderr
    assert (run / "policy.onnx").is_file() and (run / "policy.json").is_file()
    r = s2r("eval", str(run), "--episodes", "100")
    assert r.returncode == 0, r.stderr
    result = json.loads((run / "eval.json").read_text())
    assert result["episodes"] == 100 and "success_rate" in result and "success_definition" in result
    # resume continues in the same run directory, from the last checkpoint
    r = s2r("train", "--resume", str(run), "--max-iterations", "5", "--no-progress", "--no-export")
    assert r.returncode == 0, r.stderr
    assert "trained 5 iterations" in r.stdout


@pytest.mark.slow
def test_ctrl_c_saves_a_checkpoint(tmp_path):
    import signal
    import time

    run = tmp_path / "run"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "s2r.cli",
            "train",
            "--run-dir",
            str(run),
            "--num-envs",
            "64",
            "--max-iterations",
            "100000",
            "--no-progress",
            "--no-export",
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline:
        if (run / "metrics.csv").exists() and len((run / "metrics.csv").read_text().splitlines()) > 3:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "interrupted: checkpoint saved" in out
    from policies.checkpoint import load_checkpoint

    assert load_checkpoint(run / "model_last.pt")["iteration"] >= 3
