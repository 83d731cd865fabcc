"""Headless training, on-policy (PPO) or off-policy (SAC, TD3): collect, update, log, checkpoint. One loop,
top to bottom."""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from config import validate as C
from policies.checkpoint import CheckpointError, atomic_write, load_checkpoint, save_checkpoint
from policies.distributed import DistCfg, Ranks
from policies.models import build_model
from policies.networks import ActorCritic
from policies.ppo import PPO, PPOCfg
from policies.sac import OffPolicy, OffPolicyModel, ReplayBuffer, SACCfg, check_sac_cfg
from policies.storage import RolloutStorage
from policies.threads import UpdateThreads
from sim.backends import BACKEND_NAMES, check_backend_name
from sim.env import one_torch_thread, torch_threads
from sim.tasks import make_env, task_entry

ALGOS = ("ppo", "sac", "td3")


@dataclass(frozen=True)
class TrainCfg:
    task: str = "quadrotor-hover"
    num_envs: int = field(default=512, metadata=C.positive())
    seed: int = 0
    device: str = "cpu"
    # the physics (sim.backends): cpu (native MuJoCo), warp (MuJoCo Warp), auto (warp where torch sees CUDA)
    backend: str = field(
        default="auto", metadata={"check": (check_backend_name, f"must be one of {', '.join(BACKEND_NAMES)}")}
    )
    max_iterations: int = field(default=150, metadata=C.positive())
    time_limit_s: float | None = field(
        default=None, metadata={"check": (lambda v: v is None or v > 0, "must be > 0 (or unset: no limit)")}
    )
    # start the envs at random steps of their first episodes (BatchedEnv.reset)
    spread_episodes: bool = False
    save_interval: int = field(default=50, metadata=C.positive())  # iterations between numbered checkpoints
    # seconds of training between checkpoints (model_last.pt), so a kill loses at most this much
    checkpoint_interval_s: float = field(default=60.0, metadata=C.positive())
    update_threads: int = field(default=0, metadata=C.nonnegative())  # 0: timed while training (policies/threads.py)
    algo: str = field(default="ppo", metadata={"check": (lambda v: v in ALGOS, f"must be one of {', '.join(ALGOS)}")})
    ppo: PPOCfg = PPOCfg()
    sac: SACCfg = SACCfg()  # SAC's and TD3's settings
    dist: DistCfg = DistCfg()  # data-parallel training under torchrun (s2r train --distributed)


def default_train_cfg(task: str) -> TrainCfg:
    """The runner's defaults with the task's own training overrides (sim/tasks/__init__.py)."""
    return C.from_dict(TrainCfg, {"task": task, **task_entry(task).train})


def check_device(device: str) -> torch.device:
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise C.ConfigError(f"device: '{device}' is not a torch device ({e})") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise C.ConfigError(f"device: '{device}' requested but CUDA is not available on this machine")
    return dev


def check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as e:
        raise C.ConfigError(f"run directory {run_dir} is not writable: {e}") from e


class Runner:
    """Trains `cfg.task` into `run_dir`: config.json, metrics.csv, TensorBoard events, checkpoints
    (`model_<iteration>.pt`, `model_last.pt`), learning_curve.png. `resume`: a checkpoint file to continue.
    `ranks` (policies.distributed.start): data-parallel training, `cfg.num_envs` envs on each rank; rank 0
    alone writes the run directory."""

    def __init__(
        self,
        cfg: TrainCfg,
        task_cfg,
        run_dir: str | Path,
        resume: str | Path | None = None,
        ranks: Ranks | None = None,
    ):
        C.validate(cfg, prefix="train.")
        task_entry(cfg.task)
        self.ranks = ranks = ranks or Ranks()
        if cfg.algo != "ppo":
            check_sac_cfg(cfg.sac, cfg.num_envs)
            if ranks.world_size > 1:
                raise C.ConfigError(
                    f"train.algo: {cfg.algo} trains on one rank only for now ({ranks.world_size} ranks started); "
                    "run it without torchrun and --distributed"
                )
        self.device = check_device(cfg.device)
        if self.device.type == "cuda" and ranks.world_size > 1:
            self.device = torch.device("cuda", ranks.local_rank)
        self.run_dir = Path(run_dir)
        if ranks.is_main:
            check_writable(self.run_dir)
        self.cfg, self.task_cfg = cfg, task_cfg

        torch.manual_seed(cfg.seed)  # the same initial weights on every rank
        env_seed, ppo_seed = ranks.seeds(cfg.seed)
        self.env = make_env(
            cfg.task,
            cfg.num_envs,
            task_cfg,
            device=self.device,
            seed=env_seed,
            backend=cfg.backend,
        )
        dims, action_dim = self.env.obs_dims, self.env.spec.action_dim
        self.generator = torch.Generator(device=self.device)  # the learner's (its state: rng/ppo in checkpoints)
        self.generator.manual_seed(ppo_seed)
        self.learner: PPO | OffPolicy
        model = build_model(
            cfg.algo, cfg.ppo, cfg.sac, dims["policy"], dims["critic"], action_dim, self.env.spec.action.clip
        ).to(self.device)
        if isinstance(model, ActorCritic):
            p = cfg.ppo
            storage = RolloutStorage(p.num_steps, cfg.num_envs, dims, action_dim, self.device)
            self.learner = PPO(model, storage, p, self.generator, ranks, self.env.mirror() if p.symmetry else None)
            self.num_steps = p.num_steps
        else:
            assert isinstance(model, OffPolicyModel)
            s = cfg.sac
            buffer = ReplayBuffer(s.buffer_size, dims, action_dim, self.device)
            self.learner = OffPolicy(model, buffer, s, self.generator, ranks)
            self.num_steps = s.num_steps
            self.env.keep_final_obs = True  # to bootstrap from where the time limit cut an episode
        self.model: ActorCritic | OffPolicyModel = model
        self.iteration = 0
        self.obs = None  # the envs' current observations, between iterations
        self.env_steps = 0
        self.elapsed_s = 0.0
        self.stopped = "running"  # in checkpoints: how the run stood (running, completed, interrupted, time_limit)
        if resume is not None:
            self._restore(Path(resume))
        ranks.broadcast_(list(self.model.state_dict().values()), "the initial weights' broadcast")

    # --- checkpoints -----------------------------------------------------------------------------
    def config_dict(self) -> dict:
        return {"train": C.to_dict(self.cfg), "task": C.to_dict(self.task_cfg)}

    def checkpoint(self) -> dict:
        return {
            "iteration": self.iteration,
            "env_steps": self.env_steps,
            "elapsed_s": self.elapsed_s,
            "stopped": self.stopped,
            "model": self.model.state_dict(),
            "optimizer": self.learner.optimizer.state_dict(),
            "learning_rate": self.learner.learning_rate,
            "config": json.dumps(self.config_dict()),
            "spec": self.env.spec.to_json(),
            "rng": {"ppo": self.generator.get_state()},
            "env": self.env.state_dict(),
            "obs": {k: v.clone() for k, v in self.obs.items()} if self.obs is not None else {},
        }

    def save(self, name: str | None = None) -> Path:
        """Write `model_last.pt`, and `name` too when given (periodic checkpoints)."""
        checkpoint = self.checkpoint()
        for n in ([name] if name else []) + ["model_last.pt"]:
            save_checkpoint(self.run_dir / n, checkpoint)
        return self.run_dir / "model_last.pt"

    def _restore(self, path: Path) -> None:
        ckpt = load_checkpoint(path)
        try:
            self.model.load_state_dict(ckpt["model"])
            self.learner.optimizer.load_state_dict(ckpt["optimizer"])
        except (RuntimeError, ValueError, KeyError) as e:
            raise CheckpointError(f"{path} does not match this task and network: {e}") from e
        # One rank continues exactly: the checkpoint holds its random generators and, with as many envs,
        # their state. Data-parallel ranks share one checkpoint (rank 0's envs): each starts fresh
        # episodes, its generators re-seeded from seed + rank (Ranks.seeds), whatever the rank count
        # that wrote it. The curricula's levels are shared by all ranks and carry on either way.
        same_envs = self.ranks.world_size == 1 and ckpt["obs"] and ckpt["obs"]["policy"].shape[0] == self.cfg.num_envs
        try:
            if self.ranks.world_size == 1:
                self.generator.set_state(ckpt["rng"]["ppo"])
            else:
                env_seed, ppo_seed = self.ranks.seeds(self.cfg.seed, ckpt["iteration"])
                self.env.generator.manual_seed(env_seed)
                self.generator.manual_seed(ppo_seed)
        except (RuntimeError, TypeError) as e:  # e.g. "Invalid mt19937 state"
            raise CheckpointError(f"{path}: its PPO random generator state is invalid ({e})") from e
        try:
            if same_envs:
                self.env.load_state_dict(ckpt["env"])  # same envs: continue exactly where it stopped
            else:
                self.env.load_curricula(ckpt["env"])
        except (RuntimeError, TypeError, KeyError) as e:
            raise CheckpointError(f"{path}: its env state does not fit this task or is invalid ({e})") from e
        if same_envs:
            self.obs = {k: v.to(self.device) for k, v in ckpt["obs"].items()}
        self.learner.learning_rate = ckpt["learning_rate"]
        self.iteration = ckpt["iteration"]
        self.env_steps = ckpt["env_steps"]
        self.elapsed_s = ckpt["elapsed_s"]

    # --- the loop --------------------------------------------------------------------------------
    def learn(self, progress: bool = True) -> Path:
        cfg, env, learner, ranks = self.cfg, self.env, self.learner, self.ranks
        log = RunLog(self, progress) if ranks.is_main else None
        interrupted = []
        # torchrun passes what it gets (Ctrl-C, a scheduler's SIGTERM) on to every rank: they stop together, saving
        signals = [signal.SIGINT] + ([signal.SIGTERM] if ranks.world_size > 1 else [])
        previous_handlers = {s: signal.signal(s, lambda *_: interrupted.append(True)) for s in signals}
        start = time.perf_counter() - self.elapsed_s
        saved_at_s = self.elapsed_s  # training time of the last checkpoint
        obs = self.obs if self.obs is not None else env.reset(spread_episodes=cfg.spread_episodes)
        update_threads = UpdateThreads(cfg.update_threads)
        stop = ""  # why the loop stops early: interrupted, time_limit
        try:
            while self.iteration < cfg.max_iterations and not stop:
                t0 = time.perf_counter()
                ranks.phase = f"iteration {self.iteration + 1}, collecting"
                episodes = EpisodeStats()
                self.model.eval()
                with one_torch_thread():  # collect; the update below uses every thread
                    for _ in range(self.num_steps):
                        actions, record = learner.act(obs)
                        obs, rewards, terminated, truncated, extras = env.step(actions)
                        learner.record(record, rewards, terminated, truncated, extras.get("final_obs", obs))
                        if "episode" in extras:
                            episodes.add(extras["episode"])
                    if isinstance(learner, PPO):
                        learner.compute_returns(obs)
                self.obs = obs
                collect_s = time.perf_counter() - t0

                ranks.phase = f"iteration {self.iteration + 1}, updating"
                self.model.train()
                t_update = time.perf_counter()
                with torch_threads(update_threads.next()):
                    stats = learner.update()
                update_threads.record(time.perf_counter() - t_update)
                self.iteration += 1
                samples = cfg.num_envs * self.num_steps * ranks.world_size
                self.env_steps += samples
                self.elapsed_s = time.perf_counter() - start

                # The curricula and the decision to stop take every rank's episodes and signals: the ranks agree.
                timed_out = cfg.time_limit_s is not None and self.elapsed_s >= cfg.time_limit_s
                reports = ranks.gather((episodes, env.nan_resets, bool(interrupted), timed_out), "the iteration's end")
                stop = (
                    "interrupted" if any(r[2] for r in reports) else "time_limit" if any(r[3] for r in reports) else ""
                )
                ep = EpisodeStats.merged([r[0] for r in reports]).means()
                env_stats = env._after_iteration(ep)
                if cfg.dist.check_sync:  # weights, normalizers, learning rate and curriculum levels
                    scalars = {**env_stats, "learning_rate": learner.learning_rate}
                    ranks.check_same(
                        {
                            **self.model.state_dict(),
                            **{k: torch.tensor(v, device=self.device) for k, v in scalars.items()},
                        },
                        f"after iteration {self.iteration}",
                    )
                iter_s = time.perf_counter() - t0
                row = {
                    "iteration": self.iteration,
                    "env_steps": self.env_steps,
                    "time_s": round(self.elapsed_s, 3),
                    "steps_per_s": round(samples / iter_s),
                    "collect_s": round(collect_s, 4),
                    "update_s": round(iter_s - collect_s, 4),
                    "update_threads": update_threads.current,
                    **{f"episode/{k}": v for k, v in ep.items()},
                    **stats,
                    **env_stats,
                    "nan_resets": sum(r[1] for r in reports),
                }
                if log is None:
                    continue
                log.write(row)
                # By iteration a numbered file; by time only model_last.pt, overwritten, so disk use stays
                # bounded however long the run. Checked once an iteration: a kill loses at most one
                # interval plus the iteration in progress.
                by_iteration = self.iteration % cfg.save_interval == 0
                if by_iteration or self.elapsed_s - saved_at_s >= cfg.checkpoint_interval_s:
                    log.flush()  # TensorBoard on disk up to the checkpoint, like metrics.csv
                    self.save(f"model_{self.iteration}.pt" if by_iteration else None)
                    saved_at_s = self.elapsed_s
        finally:
            for s, handler in previous_handlers.items():
                signal.signal(s, handler)
            if log is not None:
                log.close()
        self.stopped = "completed" if self.iteration >= cfg.max_iterations else stop
        if log is None:
            return self.run_dir / "model_last.pt"  # rank 0 writes it
        final = self.save()
        plot_learning_curve(self.run_dir / "metrics.csv", self.run_dir / "learning_curve.png")
        if self.stopped == "interrupted":
            print(f"interrupted: checkpoint saved to {final}")
        return final


class RunLog:
    """What training writes as it goes (rank 0 only): config.json, metrics.csv, TensorBoard, progress bar."""

    def __init__(self, runner: Runner, progress: bool):
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        run_dir = runner.run_dir
        config = json.dumps(runner.config_dict(), indent=2).encode()
        atomic_write(run_dir / "config.json", lambda f: f.write(config))
        if runner.iteration == 0:  # a new run in a used folder: its logs must not continue the old run's
            (run_dir / "metrics.csv").unlink(missing_ok=True)
            shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
        self.metrics = MetricsCsv(run_dir / "metrics.csv")
        # A resume drops what was logged after its checkpoint (a killed run logs past its last checkpoint;
        # a resume from an older one trains those iterations again): rows here, scalars (logged by env
        # steps) in TensorBoard, which hides every event at or after purge_step written before this one.
        self.metrics.keep_through(runner.iteration)
        purge_step = runner.env_steps + 1 if runner.iteration else None
        self.writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=purge_step)
        self.episodes: dict[str, float] = {}
        self.bar = tqdm(
            total=runner.cfg.max_iterations,
            initial=runner.iteration,
            disable=not progress,
            unit="it",
            dynamic_ncols=True,
        )

    def write(self, row: dict) -> None:
        self.metrics.write(row)
        for k, v in row.items():
            if k != "iteration":
                self.writer.add_scalar(k, v, row["env_steps"])
        self.bar.update(1)
        # the latest episodes' figures: with short rollouts many iterations end no episode
        self.episodes.update({k: row[k] for k in ("episode/return", "episode/end/timeout") if k in row})
        self.bar.set_postfix(
            steps_per_s=row["steps_per_s"],
            ret=f"{self.episodes.get('episode/return', float('nan')):.1f}",
            survive=f"{self.episodes.get('episode/end/timeout', float('nan')):.2f}",
        )

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.bar.close()
        self.writer.close()


class EpisodeStats:
    """Count-weighted means of the per-step episode summaries the env reports."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.count = 0

    def add(self, stats: dict) -> None:
        n = stats["count"]
        self.count += n
        for k, v in stats.items():
            if k != "count":
                self.sums[k] = self.sums.get(k, 0.0) + v * n
        self.sums["return"] = self.sums.get("return", 0.0) + n * sum(
            v for k, v in stats.items() if k.startswith("reward/")
        )

    @classmethod
    def merged(cls, parts: list[EpisodeStats]) -> EpisodeStats:
        """The ranks' statistics as one, summed in rank order so every rank gets the same floats."""
        out = cls()
        for p in parts:
            out.count += p.count
            for k, v in p.sums.items():
                out.sums[k] = out.sums.get(k, 0.0) + v
        return out

    def means(self) -> dict[str, float]:
        if not self.count:
            return {}
        return {"count": self.count, **{k: v / self.count for k, v in self.sums.items()}}


class MetricsCsv:
    """Append-only CSV, one row per iteration. A row with new keys rewrites the file (atomically)
    with the wider header; a killed run keeps every row it had written."""

    def __init__(self, path: Path):
        self.path = path
        self.columns: list[str] = []
        if path.exists() and path.stat().st_size:
            with open(path, newline="") as f:
                self.columns = next(csv.reader(f), [])

    def rows(self) -> list[dict]:
        """The complete rows: a last line without its newline (a kill mid-write) is left out."""
        if not self.columns:
            return []
        text = self.path.read_text()
        return list(csv.DictReader(io.StringIO(text[: text.rfind("\n") + 1])))

    def keep_through(self, iteration: int) -> None:
        """Drop the rows after `iteration` (and a partial last line), rewriting the file atomically."""
        if self.columns:
            self._rewrite([r for r in self.rows() if int(r["iteration"]) <= iteration])

    def _rewrite(self, rows: list[dict]) -> None:
        text = io.StringIO()
        w = csv.DictWriter(text, fieldnames=self.columns)
        w.writeheader()
        w.writerows(rows)
        atomic_write(self.path, lambda f: f.write(text.getvalue().encode()))

    def write(self, row: dict) -> None:
        new_columns = [k for k in row if k not in self.columns]
        if new_columns:
            old_rows = self.rows()
            self.columns += new_columns
            self._rewrite(old_rows)
        with open(self.path, "a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.columns).writerow({k: row.get(k, "") for k in self.columns})


def plot_learning_curve(metrics_csv: Path, out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(metrics_csv, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return

    def col(name):
        return [float(r[name]) if r.get(name) not in (None, "") else math.nan for r in rows]

    t = col("time_s")
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
    axes[0].plot(t, col("episode/return"))
    axes[0].set(xlabel="wall time (s)", ylabel="episode return", title="return")
    axes[1].plot(t, col("episode/end/timeout"), label="survived to time limit")
    for name in (k for k in rows[0] if k.startswith("curriculum/")):
        axes[1].plot(t, col(name), label=f"curriculum level {name.split('/', 1)[1]}")
    axes[1].set(xlabel="wall time (s)", ylim=(0, 1.05), title="episodes")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(out_png, dpi=100)
    plt.close(fig)
