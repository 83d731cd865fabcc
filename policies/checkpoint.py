"""Checkpoints: tensors and plain data only, written atomically, loaded without unpickling code."""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

FORMAT = "s2r-checkpoint-v1"
REQUIRED = ("format", "iteration", "model", "optimizer", "config", "rng")


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
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
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
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not an s2r checkpoint (expected format '{FORMAT}')")
    missing = [k for k in REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks {missing}: truncated or from another tool")
    return ckpt
