"""Data-parallel training under torchrun: two CPU processes on gloo, started as a user starts them."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from config.validate import override
from policies.checkpoint import load_checkpoint, save_checkpoint
from policies.runner import Runner, TrainCfg
from s2r.cli import main
from sim.evaluate import evaluate
from sim.tasks import default_cfg

REPO = Path(__file__).resolve().parent.parent
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
TRAIN = ["-m", "s2r.cli", "train", "--distributed", "--num-envs", "16", "--ppo.num-steps", "8", "--no-progress"]


def rows(run: Path) -> list[dict]:
    path = run / "metrics.csv"
    return list(csv.DictReader(open(path, newline=""))) if path.exists() else []


def test_two_ranks_train_in_step_resume_across_rank_counts_and_rank_0_alone_writes(tmp_path):
    # one rank, 32 envs: 2 iterations
    cfg = override(TrainCfg(num_envs=32, max_iterations=2, save_interval=2), "ppo.num_steps", 8)
    one = Runner(cfg, default_cfg(cfg.task), tmp_path / "one")
    one.learn(progress=False)
    one.env.close()
    # resumed by two ranks of 16 envs each (the same 32 in all) to iteration 5, every update checked in sync
    run = tmp_path / "two"
    r = subprocess.run(
        [*TORCHRUN, *TRAIN, "--resume", str(tmp_path / "one"), "--run-dir", str(run), "--max-iterations", "5"]
        + ["--save-interval", "4", "--dist.check-sync", "--dist.timeout-s", "30"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("training quadrotor-hover: 16 envs on each of 2 ranks") == 1  # rank 0 alone reports
    assert "trained 5 iterations" in r.stdout
    # rank 0 alone writes: one set of files, one TensorBoard event file, each iteration logged once
    assert sorted(p.name for p in run.iterdir()) == sorted(
        ["config.json", "metrics.csv", "tensorboard", "model_4.pt", "model_last.pt", "learning_curve.png"]
        + ["policy.onnx", "policy.json"]
    )
    assert len(list((run / "tensorboard").iterdir())) == 1
    logged = rows(run)
    assert [int(x["iteration"]) for x in logged] == [3, 4, 5]
    assert [int(x["env_steps"]) for x in logged] == [2 * 256 + 256 * i for i in (1, 2, 3)]  # 2 ranks x 16 x 8
    ckpt = load_checkpoint(run / "model_last.pt")
    assert ckpt["iteration"] == 5 and ckpt["env_steps"] == 5 * 256 and ckpt["stopped"] == "completed"
    # the export evaluates as a single-process run's does
    result = evaluate(run / "policy.onnx", episodes=20)
    assert result["episodes"] == 20 and 0.0 <= result["success_rate"] <= 1.0
    # and one rank of 32 envs resumes the two ranks' checkpoint: fresh episodes, the curriculum carried on
    ckpt["env"]["curriculum/init_state/level"] = torch.tensor(0.7, dtype=torch.float64)  # as if it had moved
    save_checkpoint(tmp_path / "moved.pt", {k: v for k, v in ckpt.items() if k != "format"})
    more = override(cfg, "max_iterations", 6)
    back = Runner(more, default_cfg(cfg.task), tmp_path / "back", resume=tmp_path / "moved.pt")
    assert back.iteration == 5 and back.obs is None
    assert back.env.curricula["init_state"].level == 0.7
    for k, v in ckpt["model"].items():
        assert torch.equal(back.model.state_dict()[k], v), k
    back.learn(progress=False)
    assert back.iteration == 6 and back.env_steps == 5 * 256 + 256
    back.env.close()


WORKER = """
import os
import sys
from pathlib import Path

import torch
from policies import distributed
from policies.distributed import DistCfg, RankError, Ranks
from policies.networks import ActorCritic
from policies.ppo import PPO, PPOCfg
from policies.storage import RolloutStorage

ranks = distributed.start(DistCfg(timeout_s=30), "cpu", requested=True)
T, N, DIMS, A = 8, 6, {"policy": 5, "critic": 7}, 2  # N envs per rank
g = torch.Generator().manual_seed(0)  # the same data on both ranks: each takes its half of the envs
data = {
    **{f"obs/{k}": torch.randn(T, 2 * N, d, generator=g) * 3 + 1 for k, d in DIMS.items()},
    **{k: torch.randn(T, 2 * N, A, generator=g) * 0.3 for k in ("actions", "action_mean")},
    "action_std": torch.rand(T, 2 * N, A, generator=g) * 0.2 + 0.2,
    **{k: torch.randn(T, 2 * N, generator=g) for k in ("log_prob", "values", "returns", "advantages")},
}
cfg = PPOCfg(num_epochs=3, num_minibatches=1, desired_kl=1e-5)  # the KL rule moves the learning rate


def ppo(envs, rank_of, mine):
    torch.manual_seed(0)
    model = ActorCritic(DIMS["policy"], DIMS["critic"], A)
    storage = RolloutStorage(T, envs, DIMS, A, "cpu")
    for t in range(T):
        model.update_normalizers({k: data[f"obs/{k}"][t, mine] for k in DIMS}, rank_of)
    for k, v in data.items():
        target = storage.obs[k[4:]] if k.startswith("obs/") else getattr(storage, k)
        target.copy_(v[:, mine])
    storage.step = T
    return PPO(model, storage, cfg, torch.Generator().manual_seed(1), rank_of)


alone = ppo(2 * N, Ranks(), slice(None))  # one process, every env
together = ppo(N, ranks, slice(ranks.rank * N, (ranks.rank + 1) * N))
for name in ("policy_normalizer", "critic_normalizer"):
    for k in ("mean", "var"):
        a, b = getattr(getattr(alone.model, name), k), getattr(getattr(together.model, name), k)
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6), (name, k, (a - b).abs().max())
s_alone, s_together = alone.update(), together.update()
assert s_alone["learning_rate"] < cfg.learning_rate, s_alone
assert s_together["learning_rate"] == s_alone["learning_rate"], (s_together, s_alone)
assert abs(s_together["kl"] - s_alone["kl"]) <= 1e-5 * abs(s_alone["kl"]) + 1e-8, (s_together, s_alone)
for k, v in alone.model.state_dict().items():
    assert torch.allclose(together.model.state_dict()[k], v, rtol=1e-4, atol=1e-6), (k, v)
state = together.model.state_dict()
ranks.check_same(state, "after the update")  # identical across ranks, bit for bit
if ranks.rank == 1:
    state["critic.0.bias"][0] += 1e-6
try:
    ranks.check_same(state, "after a nudge")
    raise AssertionError("the sync check missed a difference")
except RankError as e:
    assert "after a nudge: rank 1's critic.0.bias differs from rank 0's" in str(e), e
print(f"rank {ranks.rank} matches one process")
ranks.close()
# nothing of the group is left running (an optimizer made after it must not keep it): gloo threads alive into
# interpreter teardown abort the process now and then
threads = [Path(f"/proc/self/task/{t}/comm").read_text().strip() for t in os.listdir("/proc/self/task")]
assert not [t for t in threads if "gloo" in t], threads
"""


def test_two_ranks_update_as_one_process_with_every_env(tmp_path):
    """Each rank holds half the envs' data: averaged gradients, KL and normalizer moments make the update
    (weights, learning rate, normalizers) that of one process holding it all."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    r = subprocess.run(
        [*TORCHRUN, str(script)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "rank 0 matches one process" in r.stdout and "rank 1 matches one process" in r.stdout


def worker_pids(torchrun_pid: int) -> dict[int, int]:
    """{rank: pid} of the workers torchrun started."""
    out = {}
    for task in Path(f"/proc/{torchrun_pid}/task").iterdir():
        for pid in (task / "children").read_text().split():
            env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            rank = [e for e in env if e.startswith(b"RANK=")]
            if rank:
                out[int(rank[0][5:])] = int(pid)
    return out


@pytest.mark.parametrize("fault", ["hangs", "dies"])
def test_a_rank_that_hangs_or_dies_stops_the_job_naming_it(tmp_path, fault):
    run, timeout_s = tmp_path / "run", 5
    proc = subprocess.Popen(
        [*TORCHRUN, *TRAIN, "--run-dir", str(run), "--max-iterations", "100000", "--save-interval", "100000"]
        + ["--no-export", "--dist.timeout-s", str(timeout_s)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while len(rows(run)) < 2:
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.1)
    rank_1 = worker_pids(proc.pid)[1]
    os.kill(rank_1, signal.SIGSTOP if fault == "hangs" else signal.SIGKILL)
    faulted = time.time()
    try:
        if fault == "hangs":  # rank 0 names rank 1 and exits; torchrun then waits on the stopped rank 1
            rank_0 = worker_pids(proc.pid)[0]
            while Path(f"/proc/{rank_0}").exists() and Path(f"/proc/{rank_0}/stat").read_text().split()[2] != "Z":
                assert time.time() - faulted < timeout_s + 60, "rank 0 did not stop"
                time.sleep(0.2)
            os.kill(rank_1, signal.SIGKILL)
        _, err = proc.communicate(timeout=90)
    finally:
        proc.kill()
    assert proc.returncode != 0
    if fault == "hangs":
        assert "s2r: error: rank 0: rank 1 died or hangs: no heartbeat for" in err, err
    else:  # torchrun's report names it, and rank 0 does not wait for it
        assert "rank      : 1 (local_rank: 1)" in err and "exitcode  : -9" in err, err


@pytest.mark.parametrize(
    "args, env, message",
    [
        (["--distributed"], {}, "--distributed: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set"),
        ([], {"WORLD_SIZE": "2"}, "started by torchrun (WORLD_SIZE=2) without --distributed"),
        (["--distributed", "--dist.backend", "nccl"], "torchrun", "train.dist.backend: nccl runs on CUDA devices"),
        (["--distributed", "--device", "cuda:1"], "torchrun", "each rank uses cuda:LOCAL_RANK; give --device cuda"),
        (["--distributed", "--dist.backend", "mpi"], "torchrun", "dist.backend: must be auto, nccl or gloo"),
        (["--distributed", "--dist.timeout-s", "0"], "torchrun", "dist.timeout_s: must be > 0"),
    ],
)
def test_bad_distributed_settings_are_named_before_anything_runs(tmp_path, monkeypatch, capsys, args, env, message):
    if env == "torchrun":  # what torchrun sets (nothing listens at the port: the error comes first)
        env = {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "9"}
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    assert main(["train", "--run-dir", str(tmp_path / "r"), "--no-progress", *args]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_bench_train_reports_one_rank_against_two(tmp_path):
    out = tmp_path / "bench.json"
    r = subprocess.run(
        [sys.executable, "-m", "s2r.cli", "bench", "train", "--nproc", "2", "--num-envs", "16", "--iterations", "3"]
        + ["--repeats", "1", "--json", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    assert "1 rank (s2r train)" in r.stdout and "2 ranks (torchrun)" in r.stdout and "ratio 2 ranks" in r.stdout
    figures = json.loads(out.read_text())
    assert figures["ratio"] > 0 and all(v[0] > 0 for v in figures["samples_per_s"].values())
    assert main(["bench", "train", "--nproc", "1"]) == 2
