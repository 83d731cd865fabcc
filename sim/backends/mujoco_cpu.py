"""CPU backend: native MuJoCo, all envs stepped by `mujoco.rollout` on a persistent thread pool.

Measured by `s2r bench sim` (sim/bench.py): one `rollout` call over all envs runs 2.5-3.5x faster
than a Python thread pool calling `mj_step` per env, which is bound by the GIL and per-call overhead.
Per-env model copies passed to `rollout` cost ~3x for the tiny quadrotor at one step per call (every
env reads its own model from memory), so by default envs share one MjModel and per-env physical
parameters enter through per-env inputs (controls, applied forces) computed by the task; tasks that
randomize model fields (friction, masses) ask for per-env models.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable
from pathlib import Path

import mujoco
import numpy as np
import torch
from mujoco import rollout

STATE_SPEC = mujoco.mjtState.mjSTATE_FULLPHYSICS
CONTROL_SPEC = mujoco.mjtState.mjSTATE_CTRL | mujoco.mjtState.mjSTATE_XFRC_APPLIED


class ModelError(ValueError):
    """A robot model file is missing, does not compile, or lacks what a task needs."""


def load_model(path: str | Path, edit: Callable[[mujoco.MjSpec], None] | None = None) -> mujoco.MjModel:
    """Compile an MJCF file; `edit`, if given, changes its MjSpec first (e.g. adds joint drives)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"model file not found: {path}")
    try:
        spec = mujoco.MjSpec.from_file(str(path))
        if edit is not None:
            edit(spec)
        return spec.compile()
    except ValueError as e:
        raise ModelError(f"model {path} does not compile: {e}") from e


def free_joint(model: mujoco.MjModel) -> int | None:
    """Id of the model's free joint (a floating base), or None for a fixed-base robot."""
    free = [j for j in range(model.njnt) if model.jnt_type[j] == mujoco.mjtJoint.mjJNT_FREE]
    return free[0] if free else None


def physics_substeps(model: mujoco.MjModel, control_dt_s: float | None) -> int:
    """Physics steps per control step; the control period must be a whole number of them."""
    if control_dt_s is None:
        return 1
    steps = round(control_dt_s / model.opt.timestep)
    if steps < 1 or abs(steps * model.opt.timestep - control_dt_s) > 1e-9:
        raise ModelError(
            f"control period {control_dt_s} s is not a whole multiple of the model timestep {model.opt.timestep} s"
        )
    return steps


class MujocoCpuBackend:
    """`num_envs` worlds of one model. State and inputs are zero-copy torch views of numpy buffers.

    qpos `(num_envs, nq)`, qvel `(num_envs, nv)`, act `(num_envs, na)`: current state.
    ctrl `(num_envs, nu)`, xfrc_applied `(num_envs, nbody, 6)`: inputs for the next step.
    """

    def __init__(
        self,
        model: str | Path | mujoco.MjModel,
        num_envs: int,
        nthread: int = 0,
        model_variants: int = 1,
    ):
        """`model`: a compiled model (a robot's, sim.robots.robot_model) or an MJCF path."""
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        self.model: mujoco.MjModel = model if isinstance(model, mujoco.MjModel) else load_model(model)
        self.model.opt.disableflags |= mujoco.mjtDisableBit.mjDSBL_AUTORESET
        self.num_envs = num_envs
        # torchrun's LOCAL_WORLD_SIZE: the training processes on this machine share its cores
        self.nthread = nthread or max(1, (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        m = self.model
        self._datas = [mujoco.MjData(m) for _ in range(self.nthread)]
        # Model fields (friction, masses, armature) are randomized through a pool of model variants,
        # each env stepping one of them (as legged_gym's friction buckets). Measured on the quadruped
        # (2048 envs): up to 128 variants cost nothing; a model per env halves the step rate.
        if model_variants < 1:
            raise ValueError(f"model_variants must be >= 1, got {model_variants}")
        self.variants = [m] if model_variants == 1 else [copy.copy(m) for _ in range(model_variants)]
        self.env_variant = torch.zeros(num_envs, dtype=torch.long)  # which variant each env steps
        self._models = [self.variants[0]] * num_envs
        self._pool = rollout.Rollout(nthread=self.nthread)

        nstate = mujoco.mj_stateSize(m, STATE_SPEC)
        data0 = mujoco.MjData(m)
        mujoco.mj_forward(m, data0)
        self.default_state = np.zeros(nstate)
        mujoco.mj_getState(m, data0, self.default_state, STATE_SPEC)

        self._state = np.tile(self.default_state, (num_envs, 1))
        self._control = np.zeros((num_envs, 1, m.nu + 6 * m.nbody))
        self._sensordata = np.zeros((num_envs, 1, m.nsensordata))
        # rollout writes (num_envs, nstep, ...) outputs: one step per call writes straight into the
        # state and sensor buffers (each env reads its row before writing it)
        self._buffers: dict[int, tuple[np.ndarray, ...]] = {1: (self._state[:, None], self._sensordata, self._control)}

        state = self._state_tensor = torch.from_numpy(self._state)
        i = 1  # state layout: time, qpos, qvel, act, ...
        self.qpos = state[:, i : i + m.nq]
        self.qvel = state[:, i + m.nq : i + m.nq + m.nv]
        self.act = state[:, i + m.nq + m.nv : i + m.nq + m.nv + m.na]
        control = torch.from_numpy(self._control)[:, 0]
        self.ctrl = control[:, : m.nu]
        self.xfrc_applied = control[:, m.nu :].view(num_envs, m.nbody, 6)
        # The model's sensors, from the forward pass of the last physics step, i.e. of the state one
        # physics step before `qpos`/`qvel`. (num_envs, nsensordata)
        self.sensordata = torch.from_numpy(self._sensordata)[:, 0]
        self._ok = torch.ones(num_envs, dtype=torch.bool)

    def step(self, nstep: int = 1) -> None:
        """Advance every env by `nstep` physics steps with the current inputs held.

        MuJoCo's automatic reset of unstable worlds is disabled, so divergence stays visible as
        NaN/inf for `physics_ok` and the task resets (and counts) that env.
        """
        if nstep not in self._buffers:
            n = self.num_envs
            self._buffers[nstep] = tuple(
                np.zeros((n, nstep, a.shape[-1])) for a in (self._state, self._sensordata, self._control)
            )
        state_out, sensor_out, control = self._buffers[nstep]
        if nstep > 1:
            control[:] = self._control  # rollout takes one control vector per physics step
        self._pool.rollout(
            self._models,
            self._datas,
            self._state,
            control,
            control_spec=CONTROL_SPEC,
            skip_checks=True,
            nstep=nstep,
            state=state_out,
            sensordata=sensor_out if self.model.nsensordata else None,
        )
        if nstep > 1:
            self._state[:] = state_out[:, -1]
            self._sensordata[:, 0] = sensor_out[:, -1]
        self._ok[:] = torch.from_numpy(np.isfinite(self._state.sum(axis=1)))

    def set_env_variant(self, env_ids: torch.Tensor, variant_ids: torch.Tensor) -> None:
        """From the next step on, env `env_ids[k]` steps model variant `variant_ids[k]`."""
        self.env_variant[env_ids.cpu()] = variant_ids.cpu()
        for i, v in zip(env_ids.tolist(), variant_ids.tolist(), strict=True):
            self._models[i] = self.variants[v]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "state": self._state_tensor.clone(),
            "control": torch.from_numpy(self._control).clone(),
            "env_variant": self.env_variant.clone(),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._state[:] = state["state"].numpy()
        self._control[:] = state["control"].numpy()
        self.set_env_variant(torch.arange(self.num_envs), state["env_variant"])

    def physics_ok(self) -> torch.Tensor:
        """`(num_envs,)` False where the last step diverged (NaN/inf or MuJoCo's instability reset)."""
        return self._ok

    def reset(self, env_ids: torch.Tensor, qpos: torch.Tensor, qvel: torch.Tensor) -> None:
        """Put `env_ids` at (qpos, qvel) with the model's default for everything else."""
        ids = env_ids.cpu().numpy()
        self._state[ids] = self.default_state
        self.qpos[env_ids] = qpos.to(self.qpos)
        self.qvel[env_ids] = qvel.to(self.qvel)

    def close(self) -> None:
        self._pool.close()
