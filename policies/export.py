"""Export the actor (with its observation normalizer) to ONNX, PolicySpec inside, and prove parity."""

from __future__ import annotations

import io
import json
import re
import warnings
from pathlib import Path

import numpy as np
import torch

from config import validate as C
from deploy.onnx_policy import (
    CHECKPOINT_KEY,
    INPUT_NAME,
    ITERATION_KEY,
    OUTPUT_NAME,
    SPEC_KEY,
    TASK_CONFIG_KEY,
    OnnxPolicy,
)
from deploy.spec import PolicySpec
from policies.checkpoint import CheckpointError, atomic_write, load_checkpoint
from policies.models import build_model
from policies.networks import AsymmetricModel, ExportedActor
from policies.ppo import PPOCfg
from policies.sac import SACCfg

OPSET = 17
PARITY_ATOL = 1e-5
# Where the policy stands in its run, beside s2r.checkpoint and s2r.iteration: the run's planned
# iterations, how it stood when the checkpoint was written (runner.py: running, completed, interrupted,
# time_limit; unknown for checkpoints older than that field), and export_warning's text (absent when none).
MAX_ITERATIONS_KEY, STOPPED_KEY, WARNING_KEY = "s2r.max_iterations", "s2r.stopped", "s2r.export_warning"


class ExportError(RuntimeError):
    pass


def model_from_checkpoint(ckpt: dict) -> tuple[AsymmetricModel, PolicySpec, dict]:
    """The network a loaded checkpoint holds, built from its own config; CheckpointError if they disagree."""
    config = json.loads(ckpt["config"])
    spec = PolicySpec.from_json(ckpt["spec"])
    try:
        sd = ckpt["model"]
        critic_obs_dim = sd["critic_normalizer.mean"].shape[0]
        train = config["train"]
        model = build_model(
            train.get("algo", "ppo"),  # checkpoints older than the off-policy learner: PPO
            C.from_dict(PPOCfg, train["ppo"]),
            C.from_dict(SACCfg, train.get("sac", {})),
            spec.obs_dim,
            critic_obs_dim,
            spec.action_dim,
            spec.action.clip,
        )
        model.load_state_dict(sd)
    except (KeyError, RuntimeError, C.ConfigError) as e:
        raise CheckpointError(f"its weights do not match the network its config describes ({e})") from e
    return model.eval(), spec, config


def export_onnx(
    model: AsymmetricModel,
    spec: PolicySpec,
    out_path: str | Path,
    parity_obs: np.ndarray | None = None,
    metadata: dict | None = None,
) -> dict:
    """Write `out_path` (ONNX) and `out_path.with_suffix('.json')` (the PolicySpec); check parity.

    Parity: onnxruntime against torch on random observations and on `parity_obs` (real rollout
    observations); raises ExportError if the max abs difference exceeds 1e-5.
    """
    import onnx

    out_path = Path(out_path)
    actor = ExportedActor(model).eval()
    dummy = torch.zeros(1, spec.obs_dim)
    buf = io.BytesIO()
    # The TorchScript exporter: an MLP needs nothing newer, and it takes 0.3 s where the
    # torch.export-based one takes 3 s (and converts down from opset 18). torch is pinned.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            actor,
            (dummy,),
            buf,  # pyright: ignore[reportArgumentType]  the dynamo=False exporter writes to file objects too
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            opset_version=OPSET,
            dynamo=False,
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
    proto = onnx.load_from_string(buf.getvalue())
    meta = {
        SPEC_KEY: spec.to_json(),  # names, scales, offsets and rates: all in the spec, nowhere else
        **(metadata or {}),
    }
    for k, v in meta.items():
        proto.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(proto)
    atomic_write(out_path, lambda f: f.write(proto.SerializeToString()))
    atomic_write(out_path.with_suffix(".json"), lambda f: f.write(spec.to_json().encode()))

    policy = OnnxPolicy(out_path)
    rng = np.random.default_rng(0)
    std = np.sqrt(model.policy_normalizer.var.numpy() + 1e-2)
    random_obs = (model.policy_normalizer.mean.numpy() + 3 * std * rng.standard_normal((1024, spec.obs_dim))).astype(
        np.float32
    )
    report = {}
    for name, obs in (("random", random_obs), ("rollout", parity_obs)):
        if obs is None:
            continue
        obs = np.asarray(obs, dtype=np.float32)
        with torch.no_grad():
            expected = actor(torch.from_numpy(obs)).numpy()
        diff = float(np.abs(policy(obs) - expected).max())
        report[f"parity_max_abs_diff_{name}"] = diff
        if not diff <= PARITY_ATOL:
            raise ExportError(
                f"ONNX/torch parity failed on {name} observations: max abs diff {diff:.3g} > {PARITY_ATOL}"
            )
    return report


def rollout_observations(
    model: AsymmetricModel, task: str, task_cfg, steps: int = 100, num_envs: int = 32, seed: int = 123
) -> np.ndarray:
    """Policy observations from a short rollout of the deterministic policy in the training env."""
    from sim.tasks import make_env

    env = make_env(task, num_envs, task_cfg, seed=seed)
    obs = env.reset()
    frames = []
    with torch.no_grad():
        for _ in range(steps):
            frames.append(obs["policy"].clone())
            obs, *_ = env.step(model.action_mean(obs["policy"]))
    env.close()
    return torch.cat(frames).numpy()


def export_warning(ckpt_path: Path, ckpt: dict) -> str | None:
    """Why the policy in `ckpt` may not be the run's final one: training stopped before its last
    iteration, or the run directory holds a checkpoint of a later iteration. None when neither."""
    train = json.loads(ckpt["config"])["train"]
    iteration, max_iterations = ckpt["iteration"], train["max_iterations"]
    notes = []
    if iteration < max_iterations:
        why = {
            "interrupted": "training was interrupted (Ctrl-C)",
            "time_limit": f"training stopped at its time limit ({train['time_limit_s']} s)",
            "running": "training was still running when this checkpoint was written (killed since, still running, "
            "or a periodic checkpoint)",
        }.get(ckpt.get("stopped", "unknown"), "training stopped early (the checkpoint predates recording why)")
        notes.append(f"exported from iteration {iteration} of {max_iterations}: {why}")
    later = {}
    for other in ckpt_path.parent.glob("model_*.pt"):
        numbered = re.fullmatch(r"model_(\d+)\.pt", other.name)
        if numbered:
            later[other.name] = int(numbered[1])
        elif other.name == "model_last.pt" and other.resolve() != ckpt_path.resolve():
            try:
                later[other.name] = load_checkpoint(other)["iteration"]
            except CheckpointError:
                pass  # an unreadable model_last.pt is named when it is itself used
    newest = max(later, key=lambda name: later[name], default=None)
    if newest is not None and later[newest] > iteration:
        notes.append(
            f"{ckpt_path.name} (iteration {iteration}) is older than {newest} (iteration {later[newest]}) "
            "in the same run directory"
        )
    return "; ".join(notes) or None


def export_checkpoint(ckpt_path: str | Path, out_path: str | Path | None = None) -> tuple[Path, dict]:
    """Export a checkpoint's actor beside it (or to `out_path`). Where it came from goes into the ONNX
    metadata, with export_warning's text if any (the command line prints it)."""
    from sim.tasks import task_entry

    ckpt_path = Path(ckpt_path)
    ckpt = load_checkpoint(ckpt_path)
    try:
        model, spec, config = model_from_checkpoint(ckpt)
    except CheckpointError as e:
        raise CheckpointError(f"{ckpt_path}: {e}") from e
    task = config["train"]["task"]
    task_cfg = C.from_dict(task_entry(task)[0], config["task"])
    out_path = Path(out_path) if out_path else ckpt_path.parent / "policy.onnx"
    obs = rollout_observations(model, task, task_cfg)
    warning = export_warning(ckpt_path, ckpt)
    metadata = {
        CHECKPOINT_KEY: ckpt_path.name,
        ITERATION_KEY: str(ckpt["iteration"]),
        MAX_ITERATIONS_KEY: str(config["train"]["max_iterations"]),
        STOPPED_KEY: ckpt.get("stopped", "unknown"),
        TASK_CONFIG_KEY: json.dumps(config["task"]),
        **({WARNING_KEY: warning} if warning else {}),
    }
    report = export_onnx(model, spec, out_path, obs, metadata=metadata)
    return out_path, report
