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
        (["--ppo.gamma", "1.5"], "ppo.gamma: must be in (0, 1]"),
        (["--ppo.lam", "0"], "ppo.lam: must be in (0, 1]"),
        (["--time-limit-s", "-5"], "time_limit_s: must be > 0"),
        (["--checkpoint-interval-s", "0"], "checkpoint_interval_s: must be > 0"),
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


def test_a_checkpoint_with_flipped_bytes_is_named_on_resume_and_export(tmp_path):
    from policies.runner import Runner, TrainCfg
    from sim.tasks import default_cfg

    r = Runner(TrainCfg(num_envs=8, max_iterations=1), default_cfg("quadrotor-hover"), tmp_path / "run")
    ckpt = r.learn(progress=False)
    r.env.close()
    data = bytearray(ckpt.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 16] = bytes(255 - b for b in data[middle : middle + 16])
    ckpt.write_bytes(data)
    for args in (("train", "--resume", str(ckpt)), ("export", str(ckpt.parent))):
        r = s2r(*args)
        assert r.returncode == 2, r.stderr
        assert f"{ckpt} is corrupt: its entry" in r.stderr and "CRC-32" in r.stderr and "Traceback" not in r.stderr


def metric_rows(run: Path) -> list[dict]:
    """metrics.csv's complete rows (a row being written has no newline yet)."""
    import csv

    if not (run / "metrics.csv").exists():
        return []
    text = (run / "metrics.csv").read_text()
    return list(csv.DictReader(text[: text.rfind("\n") + 1].splitlines()))


def test_kill_9_loses_at_most_one_checkpoint_interval_and_resume_logs_each_iteration_once(tmp_path):
    import time

    from policies.checkpoint import load_checkpoint

    run, interval_s = tmp_path / "run", 2.0
    train = ["train", "--run-dir", str(run), "--num-envs", "8", "--ppo.num_steps", "8", "--no-progress", "--no-export"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "s2r.cli", *train, "--max-iterations", "100000", "--save-interval", "100000"]
        + ["--checkpoint-interval-s", str(interval_s)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 300
    while not ((rows := metric_rows(run)) and float(rows[-1]["time_s"]) > 2.5 * interval_s):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.1)
    proc.kill()
    proc.communicate()
    rows = metric_rows(run)
    ckpt = load_checkpoint(run / "model_last.pt")
    assert not list(run.glob("model_[0-9]*.pt"))  # by time, model_last.pt is overwritten: no numbered files
    # The last checkpoint is within one interval of the last iteration that had finished (the one before
    # the last row: the kill may have come after the last row and before its checkpoint check).
    assert ckpt["iteration"] >= 1 and ckpt["stopped"] == "running"
    assert float(rows[-2]["time_s"]) - ckpt["elapsed_s"] < interval_s + 0.01

    r = s2r(*train[:-2], "--resume", str(run), "--max-iterations", str(ckpt["iteration"] + 2), "--no-export")
    assert r.returncode == 0, r.stderr
    iterations = [int(row["iteration"]) for row in metric_rows(run)]
    assert iterations == list(range(1, ckpt["iteration"] + 3))


def test_eval_without_policy_says_what_is_missing(tmp_path):
    r = s2r("eval", str(tmp_path))
    assert r.returncode == 2 and "no exported policy" in r.stderr


def test_bench_sim_prints_ratio_to_ceiling(tmp_path):
    out = tmp_path / "bench.json"
    r = s2r(
        "bench", "sim", "--task", "quadrotor-hover", "--num-envs", "256", "--steps", "20", "--backend", "cpu",
        "--json", str(out),
    )  # fmt: skip
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


def test_ctrl_c_saves_a_checkpoint_and_its_export_says_it_is_partial(tmp_path):
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
            "8",
            "--ppo.num_steps",
            "8",
            "--max-iterations",
            "100000",
            "--no-progress",
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

    iteration = load_checkpoint(run / "model_last.pt")["iteration"]
    assert iteration >= 3
    warning = f"exported from iteration {iteration} of 100000: training was interrupted"
    assert warning in err and "s2r: warning" in err
    from deploy.onnx_policy import read_metadata

    assert warning in read_metadata(run / "policy.onnx")["s2r.export_warning"]
