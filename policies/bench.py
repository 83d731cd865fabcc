"""`s2r bench train`, two modes.

Learners (`--task T`, no `--nproc`): the training time each learner (PPO, TD3, SAC) needs to reach the task's
success bar (sim.tasks.SuccessBar), with the MuJoCo ceiling (`s2r bench sim`'s) measured before and after in the
same run, since times on a shared machine mean little without it. Each learner is `s2r train --algo A
--time-limit-s S --save-interval K --no-export`; afterwards its numbered checkpoints are exported and evaluated
in order (`s2r eval`'s evaluation) until one meets the bar. The time to the bar is that iteration's `time_s`
in metrics.csv: training only, without start-up, exports and evaluations.

Ranks (`--nproc K`): training samples per second of one rank against `nproc` ranks under torchrun, with the
same envs per rank, timed alternately in the same run (the shared machine's speed drifts).

One rank is `s2r train` as usual; `nproc` ranks are `torchrun --standalone --nproc_per_node nproc -m s2r.cli
train --distributed`. A sample is one env step; the rate counts every rank's, from the run's metrics.csv,
leaving out the first iteration (start-up). On one machine the ranks share its cores: a CPU-bound run gains
little. On GPUs or several nodes users measure their own scaling with the same command.
"""

from __future__ import annotations

import csv
import dataclasses
import re
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from config import validate as C
from config.validate import ConfigError
from policies.checkpoint import load_checkpoint
from policies.export import export_checkpoint
from policies.runner import ALGOS, check_device, default_train_cfg
from policies.sac import check_sac_cfg
from sim.bench import bench_sim
from sim.evaluate import evaluate
from sim.tasks import SuccessBar, task_entry


def train_command(nproc: int, run_dir: Path, task: str, num_envs: int, iterations: int, device: str) -> list[str]:
    launch = [sys.executable, "-m", "s2r.cli"]
    if nproc > 1:
        launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
        launch += ["-m", "s2r.cli"]
    args = ["train", "--task", task, "--run-dir", str(run_dir), "--num-envs", str(num_envs), "--device", device]
    args += ["--max-iterations", str(iterations), "--save-interval", str(iterations), "--no-progress", "--no-export"]
    return launch + args + (["--distributed"] if nproc > 1 else [])


def samples_per_s(metrics_csv: Path) -> float:
    """Env steps of every rank per second of training, from the second iteration to the last."""
    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    first, last = rows[0], rows[-1]
    return (int(last["env_steps"]) - int(first["env_steps"])) / (float(last["time_s"]) - float(first["time_s"]))


def run(command: list[str], what: str) -> None:
    """Run a training subprocess; its failure ends the bench with its own error output."""
    r = subprocess.run(command, capture_output=True, text=True)
    if r.returncode != 0:
        raise SystemExit(f"s2r bench train: {what} failed (exit {r.returncode}):\n{r.stderr[-3000:]}")


def bench_train(
    task: str, num_envs: int = 512, nproc: int = 2, iterations: int = 10, repeats: int = 3, device: str = "cpu"
) -> dict:
    for name, value, least in (("--nproc", nproc, 2), ("--num-envs", num_envs, 1), ("--iterations", iterations, 3)):
        if value < least:
            raise ConfigError(f"{name} must be >= {least}, got {value}")
    if repeats < 1:
        raise ConfigError(f"--repeats must be >= 1, got {repeats}")
    rates: dict[int, list[float]] = {1: [], nproc: []}
    with tempfile.TemporaryDirectory(prefix="s2r-bench-train-") as tmp:
        for i in range(repeats):
            for k in (1, nproc):
                run_dir = Path(tmp) / f"{k}-{i}"
                run(train_command(k, run_dir, task, num_envs, iterations, device), f"the {k}-rank run")
                rates[k].append(samples_per_s(run_dir / "metrics.csv"))
    ratios = [b / a for a, b in zip(rates[1], rates[nproc], strict=True)]
    return {
        "task": task,
        "device": device,
        "num_envs_per_rank": num_envs,
        "nproc": nproc,
        "iterations": iterations,
        "repeats": repeats,
        "samples_per_s": {str(k): v for k, v in rates.items()},
        "ratio": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
    }


# --- learners to the task's success bar ------------------------------------------------------------
# Iterations between evaluated checkpoints when --eval-every is not given: each learner's iterations differ
# in length (hover, 512 envs: PPO ~0.2 s, TD3 and SAC ~0.07 s), so about 2 s (PPO) to 20 s apart: a time to
# the bar is late by up to that much.
EVAL_EVERY = {"ppo": 10, "td3": 250, "sac": 250}
NO_ITERATION_LIMIT = 10**9  # the time budget alone stops a learner
NUMBERED = re.compile(r"model_(\d+)\.pt")


def _algos_ok(algos: tuple[str, ...]) -> bool:
    return len(algos) > 0 and len(set(algos)) == len(algos) and all(a in ALGOS for a in algos)


@dataclass(frozen=True)
class LearnersBenchCfg:
    """`s2r bench train --task T`: each of `algos` trains `time_budget_s` seconds of training time on
    `num_envs` envs; every `eval_every`-th iteration's checkpoint is evaluated on `episodes` episodes."""

    task: str = "quadrotor-hover"
    algos: tuple[str, ...] = field(
        default=("ppo", "td3", "sac"),
        metadata={"check": (_algos_ok, f"must name one or more of {', '.join(ALGOS)}, each once")},
    )
    time_budget_s: float = field(default=300.0, metadata=C.positive())
    eval_every: int | None = field(  # None: EVAL_EVERY's, per learner
        default=None, metadata={"check": (lambda v: v is None or v >= 1, "must be >= 1 (or unset: per learner)")}
    )
    episodes: int = field(default=200, metadata=C.positive())
    num_envs: int | None = field(  # None: the task's default
        default=None, metadata={"check": (lambda v: v is None or v >= 1, "must be >= 1 (or unset: the task's)")}
    )
    seed: int = 0
    device: str = "cpu"
    backend: str = "auto"  # the physics of training, evaluation and ceiling (sim.backends)
    run_dir: str | None = None  # where each learner's run is kept, as RUN_DIR/ALGO; None: a temporary folder


def learner_command(cfg: LearnersBenchCfg, algo: str, run_dir: Path) -> list[str]:
    args = ["train", "--task", cfg.task, "--algo", algo, "--run-dir", str(run_dir), "--seed", str(cfg.seed)]
    args += ["--device", cfg.device, "--backend", cfg.backend, "--time-limit-s", str(cfg.time_budget_s)]
    args += ["--max-iterations", str(NO_ITERATION_LIMIT), "--save-interval", str(cfg.eval_every or EVAL_EVERY[algo])]
    args += ["--num-envs", str(cfg.num_envs)] if cfg.num_envs else []
    return [sys.executable, "-m", "s2r.cli", *args, "--no-progress", "--no-export"]


def check_learners_cfg(cfg: LearnersBenchCfg) -> None:
    """Everything each learner's `s2r train` would refuse, refused before the first one starts."""
    C.validate(cfg, prefix="bench train.")
    task_entry(cfg.task)
    check_device(cfg.device)
    default = default_train_cfg(cfg.task)
    for algo in cfg.algos:
        if cfg.run_dir and (Path(cfg.run_dir) / algo).exists():  # its old checkpoints would be scanned too
            raise ConfigError(f"bench train.run_dir: {Path(cfg.run_dir) / algo} exists; name a new folder")
        train = dataclasses.replace(
            default, algo=algo, num_envs=cfg.num_envs or default.num_envs, device=cfg.device, backend=cfg.backend
        )
        C.validate(train, prefix="train.")
        if algo != "ppo":
            check_sac_cfg(train.sac, train.num_envs)


def checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """A finished run's checkpoints by iteration: the numbered ones, then model_last.pt (where training
    stopped at its time limit) if it is later."""
    found = sorted((int(m[1]), p) for p in run_dir.glob("model_*.pt") if (m := NUMBERED.fullmatch(p.name)))
    last = run_dir / "model_last.pt"
    iteration = load_checkpoint(last)["iteration"]
    if not found or iteration > found[-1][0]:
        found.append((iteration, last))
    return found


def time_to_bar(run_dir: Path, bar: SuccessBar, episodes: int, backend: str) -> dict:
    """Export and evaluate a finished run's checkpoints in order until one meets `bar`: that one's figures,
    or, if none does, the best's (the smallest shortfall). Times are metrics.csv's `time_s`."""
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = {int(r["iteration"]): r for r in csv.DictReader(f)}
    metrics = [b.metric for b in bar.bounds]
    evaluated = []
    t0 = time.perf_counter()
    for iteration, ckpt in checkpoints(run_dir):
        onnx_path, _ = export_checkpoint(ckpt, run_dir / f"policy_{iteration}.onnx")
        summary = evaluate(onnx_path, episodes=episodes, backend=backend)
        evaluated.append(
            {
                "iteration": iteration,
                "time_s": float(rows[iteration]["time_s"]),
                "env_steps": int(rows[iteration]["env_steps"]),
                **{m: summary[m] for m in metrics},
                "met": bar.met(summary),
                "shortfall": bar.shortfall(summary),
            }
        )
        if evaluated[-1]["met"]:
            break
    last, met = rows[max(rows)], evaluated[-1]["met"]
    return {
        "met": met,
        "at": evaluated[-1] if met else min(evaluated, key=lambda e: e["shortfall"]),  # or the best
        "evaluated": evaluated,
        "trained_iterations": int(last["iteration"]),
        "trained_s": float(last["time_s"]),
        "trained_env_steps": int(last["env_steps"]),
        "eval_wall_s": time.perf_counter() - t0,
    }


def ceiling(cfg: LearnersBenchCfg) -> dict:
    """`s2r bench sim`'s figures at the task's default env count: the MuJoCo ceiling the times stand beside."""
    return bench_sim(cfg.task, default_train_cfg(cfg.task).num_envs, backend=cfg.backend)


def bench_learners(cfg: LearnersBenchCfg) -> dict:
    check_learners_cfg(cfg)
    bar = task_entry(cfg.task).bar
    before = ceiling(cfg)
    learners = {}
    with tempfile.TemporaryDirectory(prefix="s2r-bench-learners-") as tmp:
        for algo in cfg.algos:
            run_dir = Path(cfg.run_dir or tmp) / algo
            t0 = time.perf_counter()
            run(learner_command(cfg, algo, run_dir), f"s2r train --algo {algo}")
            learners[algo] = {
                "run_wall_s": time.perf_counter() - t0,
                **time_to_bar(run_dir, bar, cfg.episodes, cfg.backend),
            }
    after = ceiling(cfg)
    ceilings = [before["mj_step_ceiling_per_s"], after["mj_step_ceiling_per_s"]]
    # the time at the ceiling the goal is stated at: hover's, on native MuJoCo (a Warp ceiling is another scale)
    scale = [c / bar.ceiling_per_s for c in ceilings] if bar.ceiling_per_s and after["backend"] == "cpu" else None
    for result in learners.values():  # before, after
        at_goal = [result["at"]["time_s"] * k for k in scale] if scale else None
        result["time_s_at_goal_ceiling"] = at_goal if result["met"] else None
    return {
        **dataclasses.asdict(cfg),
        "num_envs": cfg.num_envs or default_train_cfg(cfg.task).num_envs,
        "eval_every": {a: cfg.eval_every or EVAL_EVERY[a] for a in cfg.algos},
        "bar": str(bar),
        "bar_metrics": [b.metric for b in bar.bounds],
        "goal_s": bar.goal_s,
        "goal_ceiling_per_s": bar.ceiling_per_s,
        "scale_to_goal_ceiling": scale,  # ceiling before and after / the goal's, where they compare
        "ceiling_before": before,
        "ceiling_after": after,
        "learners": learners,
    }
