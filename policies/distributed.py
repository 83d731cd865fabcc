"""Data-parallel training across processes with torch.distributed, as torchrun starts them.

Each rank steps its own envs (seeded apart by rank) and holds a whole copy of the model. The copies stay
identical because everything that changes the model is averaged across the ranks before it is used:
gradients, the KL that adapts the learning rate, the observation normalizers' batch moments, and the
episode statistics the curricula decide on. Only rank 0 writes files. Without torchrun (one rank)
there is no process group and every helper here returns at once.

A rank that dies or hangs stops the job within `timeout_s`: each rank beats into torchrun's store once
a second from a thread and watches the others' beats, so the rank that fell silent is named whatever
the backend (a NCCL collective that times out would only abort, naming nobody).
"""

from __future__ import annotations

import datetime
import importlib
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import NoReturn

import torch
import torch.distributed as dist
from torch.distributed.rendezvous import rendezvous

from config import validate as C

# what torchrun sets for each process it starts
TORCHRUN_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
BEAT_S = 1.0  # heartbeat period
EXIT_CODE = 2  # as the CLI's named errors


class RankError(RuntimeError):
    """A rank died, hangs, or fell out of step with the others; the message names it."""


@dataclass(frozen=True)
class DistCfg:
    # auto: nccl when the device is CUDA, gloo on CPU
    backend: str = field(
        default="auto",
        metadata={"check": (lambda v: v in ("auto", "nccl", "gloo"), "must be auto, nccl or gloo")},
    )
    # a rank silent this long (dead, hung, its machine gone) stops the job, named; a collective gives up 5 s later
    timeout_s: float = field(default=120.0, metadata=C.positive())
    # debugging: after every update, compare every rank's weights and normalizers with rank 0's
    check_sync: bool = False


class Ranks:
    """This process's place among the ranks, and the collectives training needs. `Ranks()`: one rank."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0, timeout_s: float = 0.0, store=None):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.timeout_s = timeout_s
        self.phase = "starting"  # what this rank is doing, as the others see it in its heartbeat
        self._heartbeat = _Heartbeat(self, store) if store is not None else None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one that logs, checkpoints and exports."""
        return self.rank == 0

    def seeds(self, seed: int, iteration: int = 0) -> tuple[int, int]:
        """(env seed, PPO sampling seed) of this rank: `seed + rank` and `seed + world_size + rank` at the
        start (one rank: seed and seed + 1), offset by 2 * world_size * iteration when a resume re-seeds."""
        base = seed + 2 * self.world_size * iteration
        return base + self.rank, base + self.world_size + self.rank

    def mean_(self, tensors: list[torch.Tensor], what: str) -> None:
        """Average `tensors` across the ranks in place, in one collective."""
        if self.world_size == 1:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        self._collective(what, lambda: dist.all_reduce(flat))
        flat /= self.world_size
        for t, part in zip(tensors, flat.split([t.numel() for t in tensors]), strict=True):
            t.copy_(part.view_as(t))

    def broadcast_(self, tensors: list[torch.Tensor], what: str) -> None:
        """Rank 0's values of `tensors`, in place on every rank."""
        if self.world_size == 1:
            return
        for t in tensors:
            self._collective(what, lambda t=t: dist.broadcast(t, src=0))

    def gather(self, obj, what: str) -> list:
        """Every rank's `obj` (plain data), in rank order."""
        if self.world_size == 1:
            return [obj]
        out = [None] * self.world_size
        self._collective(what, lambda: dist.all_gather_object(out, obj))
        return out

    def check_same(self, tensors: dict[str, torch.Tensor], when: str) -> None:
        """RankError naming the first rank and tensor that differ from rank 0's (bit for bit)."""
        if self.world_size == 1:
            return
        flat = torch.cat([t.detach().reshape(-1).double() for t in tensors.values()])
        gathered = [torch.empty_like(flat) for _ in range(self.world_size)]
        self._collective("the sync check", lambda: dist.all_gather(gathered, flat))
        sizes = [t.numel() for t in tensors.values()]
        for r, other in enumerate(gathered[1:], start=1):
            for name, a, b in zip(tensors, gathered[0].split(sizes), other.split(sizes), strict=True):
                if not torch.equal(a, b):
                    diff = (a - b).abs().max().item()
                    raise RankError(f"{when}: rank {r}'s {name} differs from rank 0's (max |diff| {diff:.3g})")

    def close(self) -> None:
        """Leave the process group; the others stop watching this rank's heartbeat. The ranks leave together:
        a rank that tears down its connections while a peer still finishes a collective on them aborts that
        peer (gloo: "terminate called without an active exception")."""
        if self._heartbeat is not None:
            self._collective("leaving the process group", dist.barrier)
            self._heartbeat.stop()
            self._heartbeat = None
            dist.destroy_process_group()

    def _collective(self, what: str, run) -> None:
        try:
            run()
        except RuntimeError as e:  # DistBackendError and friends: a timeout, or a peer gone
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise RankError(f"rank {self.rank}: {what} with the other ranks failed ({first}); {self._who()}") from e

    def _who(self) -> str:
        """Which ranks stopped beating: a rank that just died is silent after a few beats."""
        assert self._heartbeat is not None
        time.sleep(3 * BEAT_S)
        heard = self._heartbeat.heard()
        silent = {r: h for r, h in heard.items() if h[0] > 2 * BEAT_S}
        if silent:
            return "; ".join(
                f"rank {r} died or hangs: silent for {s:.0f} s, last at {p}" for r, (s, p) in silent.items()
            )
        return "every rank still beats; where each is: " + ", ".join(f"rank {r} {p}" for r, (_, p) in heard.items())


class _Heartbeat:
    """Beats `<count> <phase>` into the store once a second and watches the other ranks' beats; exits the
    process, naming them, when some fell silent for `timeout_s` (the main thread may be stuck in a
    collective that never returns, so raising there is not enough)."""

    def __init__(self, ranks: Ranks, store):
        self.ranks, self.store = ranks, store
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")  # a restarted job's ranks beat afresh
        self.keys = [f"s2r/{attempt}/beat/{r}" for r in range(ranks.world_size)]
        self.others = [r for r in range(ranks.world_size) if r != ranks.rank]
        now = time.monotonic()
        self.last: dict[int, tuple[bytes, float]] = {r: (b"", now) for r in self.others}
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.count = 0
        self._beat()
        store.wait(self.keys, datetime.timedelta(seconds=ranks.timeout_s))  # every rank has beaten once
        self.thread = threading.Thread(target=self._run, name="s2r-heartbeat", daemon=True)
        self.thread.start()

    def _beat(self) -> None:
        self.count += 1
        self.store.set(self.keys[self.ranks.rank], f"{self.count} {self.ranks.phase}")

    def _run(self) -> None:
        while not self.stopping.wait(BEAT_S):
            try:
                self._beat()
                values = self.store.multi_get([self.keys[r] for r in self.others])
            except RuntimeError as e:
                if self.stopping.is_set():
                    return
                _die(f"rank {self.ranks.rank}: lost torchrun's store ({e}): rank 0's node or its torchrun is gone")
            now = time.monotonic()
            with self.lock:
                for r, value in zip(self.others, values, strict=True):
                    if value != self.last[r][0]:
                        self.last[r] = (value, now)
            silent = {r: h for r, h in self.heard().items() if h[0] >= self.ranks.timeout_s}
            if silent and not self.stopping.is_set():
                _die(
                    f"rank {self.ranks.rank}: "
                    + "; ".join(
                        f"rank {r} died or hangs: no heartbeat for {s:.0f} s (train.dist.timeout_s "
                        f"{self.ranks.timeout_s:g}), last at {p}"
                        for r, (s, p) in silent.items()
                    )
                )

    def heard(self) -> dict[int, tuple[float, str]]:
        """For each other rank still training: (seconds since its beat last changed, its last phase)."""
        now = time.monotonic()
        with self.lock:
            last = dict(self.last)
        out = {}
        for r, (value, t) in last.items():
            phase = value.decode().partition(" ")[2] or "start"
            if phase != "done":
                out[r] = (now - t, phase)
        return out

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join()
        self.ranks.phase = "done"
        self._beat()


def _die(message: str) -> NoReturn:
    print(f"s2r: error: {message}", file=sys.stderr, flush=True)
    os._exit(EXIT_CODE)


def start(cfg: DistCfg, device: str, requested: bool) -> Ranks:
    """This process's Ranks: one rank without torchrun; with `requested` (`s2r train --distributed`),
    joins the process group torchrun's variables describe. Every bad combination is a ConfigError,
    raised before any process waits for another."""
    world = os.environ.get("WORLD_SIZE")
    if not requested:
        if world not in (None, "1"):
            raise C.ConfigError(
                f"started by torchrun (WORLD_SIZE={world}) without --distributed: each process would train alone "
                "into the same run directory; add --distributed"
            )
        return Ranks()
    missing = [v for v in TORCHRUN_VARS if v not in os.environ]
    if missing:
        raise C.ConfigError(
            f"--distributed: {', '.join(missing)} not set; start it with torchrun: "
            "torchrun --nproc_per_node K -m s2r.cli train --distributed ..."
        )
    try:
        rank, world_size, local_rank = (int(os.environ[v]) for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    except ValueError as e:
        raise C.ConfigError(f"--distributed: RANK, WORLD_SIZE and LOCAL_RANK must be integers ({e})") from None
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise C.ConfigError(f"device: '{device}' is not a torch device ({e})") from e
    if dev.type == "cuda":
        if dev.index is not None:
            raise C.ConfigError(
                f"device: '{device}': under --distributed each rank uses cuda:LOCAL_RANK; give --device cuda"
            )
        if not torch.cuda.is_available() or local_rank >= torch.cuda.device_count():
            raise C.ConfigError(
                f"device: rank {rank} needs cuda:{local_rank} (LOCAL_RANK), but this node has "
                f"{torch.cuda.device_count() if torch.cuda.is_available() else 'no'} CUDA devices"
            )
    backend = cfg.backend if cfg.backend != "auto" else ("nccl" if dev.type == "cuda" else "gloo")
    if backend == "nccl" and dev.type != "cuda":
        raise C.ConfigError(f"train.dist.backend: nccl runs on CUDA devices, not on '{device}' (use gloo on CPU)")
    if backend == "nccl" and not dist.is_nccl_available():
        raise C.ConfigError("train.dist.backend: nccl is not available in this torch build (use gloo)")
    if dev.type == "cuda":
        torch.cuda.set_device(local_rank)
    if world_size == 1:
        return Ranks()
    # The process group waits a little longer than the heartbeat, which names the silent rank (a NCCL
    # collective that times out aborts the process without a word about who is missing).
    timeout = datetime.timedelta(seconds=cfg.timeout_s + 5 * BEAT_S)
    # torch._dynamo, first imported lazily by the first optimizer, keeps a reference to every process group that
    # exists at its import, so destroy_process_group would leave gloo's threads running into interpreter teardown,
    # where they abort the process now and then ("terminate called without an active exception", exit -6).
    # Imported before the group exists, it holds none.
    importlib.import_module("torch._dynamo")

    store, _, _ = next(rendezvous("env://", rank, world_size, timeout=timeout))
    dist.init_process_group(
        backend,
        store=store,
        rank=rank,
        world_size=world_size,
        timeout=timeout,
        device_id=torch.device("cuda", local_rank) if backend == "nccl" else None,
    )
    return Ranks(rank, world_size, local_rank, cfg.timeout_s, store)
