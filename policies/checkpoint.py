"""Checkpoints: tensors and plain data only, written atomically, loaded without unpickling code."""

from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

FORMAT = "s2r-checkpoint-v1"
# What the runner writes, and the type each must have ("stopped" is optional: older checkpoints lack it).
REQUIRED = {
    "iteration": int,
    "env_steps": int,
    "elapsed_s": (int, float),
    "model": dict,
    "optimizer": dict,
    "learning_rate": (int, float),
    "config": str,
    "spec": str,
    "rng": dict,
    "env": dict,
    "obs": dict,
}


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated, corrupt, or not an s2r checkpoint."""


def atomic_write(path: str | Path, write) -> None:
    """Call `write(file)` on a temporary file beside `path`, then rename it over `path`.

    A kill at any moment leaves either the old file or the new one, never a partial file.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path: str | Path, checkpoint: dict) -> None:
    checkpoint = {"format": FORMAT, **checkpoint}
    atomic_write(path, lambda f: torch.save(checkpoint, f))


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    """The checkpoint at `path`, checked before use: every byte as written (the zip's CRC-32s, which
    torch.load does not verify), the keys and types the runner writes, finite weights and optimizer
    moments, random generator states of the right type. CheckpointError names the file and the fault."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with zipfile.ZipFile(path) as z:
            altered = z.testzip()
        ckpt = None if altered else torch.load(path, map_location=map_location, weights_only=True)
    except (
        pickle.UnpicklingError,
        RuntimeError,
        EOFError,
        zipfile.BadZipFile,
        OSError,
        ValueError,
        AttributeError,
    ) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"{path} is not a loadable s2r checkpoint (corrupt, truncated, or it holds code objects, which are "
            f"never unpickled): {first}"
        ) from e
    if altered:
        raise CheckpointError(
            f"{path} is corrupt: its entry '{altered}' fails its CRC-32 check (bytes changed on disk)"
        )
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an s2r checkpoint (expected format '{FORMAT}')")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}: truncated or from another tool")
    problem = _contents_problem(ckpt)
    if problem:
        raise CheckpointError(f"{path} is not usable: {problem}")
    return ckpt


def _contents_problem(ckpt: dict) -> str | None:
    """What is wrong inside a loaded checkpoint, or None. The shapes are checked where the network is
    built from the checkpoint's config (load_state_dict in the runner and in export)."""
    for key, kind in REQUIRED.items():
        if not isinstance(ckpt[key], kind) or isinstance(ckpt[key], bool):
            return f"'{key}' is a {type(ckpt[key]).__name__}"
    try:
        config = json.loads(ckpt["config"])
    except json.JSONDecodeError as e:
        return f"'config' is not JSON ({e})"
    if not (isinstance(config, dict) and isinstance(config.get("train"), dict) and "task" in config):
        return "'config' lacks the training and task configs"
    # PPO's optimizer state, or the off-policy learner's by name (actor, critic, alpha)
    optimizer = ckpt["optimizer"]
    by_name = {"": optimizer} if "state" in optimizer else {f"{n}/": o for n, o in optimizer.items()}
    moments = [
        (f"optimizer state {n}{i}/{k}", t)
        for n, o in by_name.items()
        if isinstance(o, dict)
        for i, s in o.get("state", {}).items()
        for k, t in s.items()
    ]
    for name, t in [*(("model " + k, t) for k, t in ckpt["model"].items()), *moments]:
        if not isinstance(t, torch.Tensor):
            return f"{name} is a {type(t).__name__}, not a tensor"
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            return f"{name} holds NaN or inf (corrupt, or saved from a diverged run)"
    for name, t in (("rng/ppo", ckpt["rng"].get("ppo")), ("env/generator", ckpt["env"].get("generator"))):
        if not (isinstance(t, torch.Tensor) and t.dtype == torch.uint8 and t.dim() == 1):
            return f"the random generator state {name} is not a 1-D uint8 tensor"
    return None
