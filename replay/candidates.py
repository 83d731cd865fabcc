"""What a log is replayed against: the PolicySpec it was recorded with, and the candidate policies
(ONNX exports with their observation normalizer) checked to fit it; the error replay raises."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from deploy.onnx_policy import OnnxPolicy, PolicyLoadError, load_model
from deploy.spec import PolicySpec, SpecError
from replay.bag import BagReader

NORMALIZER = ("normalizer.mean", "normalizer.std")  # ONNX initializers of policies.networks.ExportedActor


class ReplayError(ValueError):
    """The log cannot be replayed as asked: a missing topic, field or metadata; a policy that does not fit."""


@dataclass(frozen=True)
class Candidate:
    path: Path
    policy: OnnxPolicy
    obs_mean: np.ndarray  # (obs_dim,) training normalizer statistics
    obs_std: np.ndarray  # (obs_dim,) sqrt(var + eps), what the network divides by

    @property
    def name(self) -> str:
        return self.path.stem if self.path.stem != "policy" else self.path.parent.name


def normalizer_stats(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """The observation normalizer's mean and std, read from the ONNX initializers by name."""
    from onnx import numpy_helper

    inits = {i.name: i for i in load_model(path)[0].graph.initializer}
    missing = [n for n in NORMALIZER if n not in inits]
    if missing:
        raise PolicyLoadError(f"{path}: no initializers {missing}: not an s2r export with its observation normalizer")
    mean, std = (numpy_helper.to_array(inits[n]).astype(np.float64) for n in NORMALIZER)
    return mean, std


def load_candidate(path: str | Path, logged: PolicySpec) -> Candidate:
    path = Path(path)
    policy = OnnxPolicy(path)
    try:
        policy.spec.check_compatible(logged)
    except SpecError as e:
        raise ReplayError(f"policy {path} does not fit the logged robot: {e}") from e
    return Candidate(path, policy, *normalizer_stats(path))


def logged_spec(reader: BagReader, fallback: PolicySpec | None) -> PolicySpec:
    """The PolicySpec in the bag's custom data, else `fallback` (a candidate's)."""
    text = reader.metadata.get("policy_spec")
    if text is None:
        if fallback is None:
            raise ReplayError(
                f"bag {reader.path} has no 'policy_spec' custom data and no --policy was given to read it from"
            )
        return fallback
    return PolicySpec.from_json(text)
