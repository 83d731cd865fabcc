"""`s2r bench train`: training samples per second of one rank against `nproc` ranks under torchrun, with the
same envs per rank, timed alternately in the same run (the shared machine's speed drifts).

One rank is `s2r train` as usual; `nproc` ranks are `torchrun --standalone --nproc_per_node nproc -m s2r.cli
train --distributed`. A sample is one env step; the rate counts every rank's, from the run's metrics.csv,
leaving out the first iteration (start-up). On one machine the ranks share its cores: a CPU-bound run gains
little. On GPUs or several nodes users measure their own scaling with the same command.
"""

from __future__ import annotations

import csv
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from config.validate import ConfigError


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


def bench_train(task: str, num_envs: int, nproc: int, iterations: int, repeats: int, device: str = "cpu") -> dict:
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
                r = subprocess.run(
                    train_command(k, run_dir, task, num_envs, iterations, device), capture_output=True, text=True
                )
                if r.returncode != 0:
                    raise SystemExit(
                        f"s2r bench train: the {k}-rank run failed (exit {r.returncode}):\n{r.stderr[-3000:]}"
                    )
                rates[k].append(samples_per_s(run_dir / "metrics.csv"))
    ratios = [b / a for a, b in zip(rates[1], rates[nproc], strict=True)]
    return {
        "task": task,
        "device": device,
        "num_envs_per_rank": num_envs,
        "nproc": nproc,
        "iterations": iterations,
        "samples_per_s": {str(k): v for k, v in rates.items()},
        "ratio": statistics.median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
    }
