"""Warp backend: MuJoCo Warp (`mujoco_warp`), all envs as the worlds of one batched Data on a Warp device.

Same interface and semantics as the CPU backend (sim/backends/mujoco_cpu.py): torch views of the state
and inputs, `sensordata` from the forward pass of the last physics step, checkpoints in the same state
layout, so a run saved on one backend resumes on the other. Differences: the physics runs in float32
(MuJoCo Warp's precision; the CPU backend's is float64), and the views live on the Warp device (CUDA
when present, else Warp's CPU device, which runs kernels on one thread and is for the parity tests).

Model variants (startup events, sim/terms/events.py) become per-world model fields: a field the variants
change gets a world dimension, and each world's row is its variant's. MuJoCo Warp gives a world
dimension only to some fields (its `Model` fields declared `(*, ...)`: masses, inertias, friction,
damping, armature, gains, ...); a variant that changes any other field (e.g. geom_condim,
geom_priority, jnt_limited, hfield_data, opt.iterations) is refused, naming the field.

Contact and constraint buffers are sized from the model: per world, the most contacts its candidate
geom pairs can make and the constraint rows they and the joints' limits, friction loss and equalities
can take; MuJoCo Warp shares the contact buffer between worlds (`naconmax` = worlds x that bound). An
overflow stops the run with an error naming it, instead of the contacts being dropped.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import warnings
from pathlib import Path

import mujoco
import mujoco_warp as mjw  # without it, sim.backends.make_backend says what to install
import numpy as np
import torch
import warp as wp

from sim.backends import BackendError
from sim.backends.mujoco_cpu import STATE_SPEC, load_model

wp.config.log_level = wp.LOG_WARNING  # no start-up banner, no line per module loaded

G = mujoco.mjtGeom
# The most contacts MuJoCo Warp's collision function for a pair of geom types writes (mujoco_warp
# collision_primitive.py); every other pair goes through its convex path (GJK/EPA, meshes, height
# fields), which writes up to mjMAXCONPAIR.
PAIR_CONTACTS = {
    tuple(sorted((int(a), int(b)))): n
    for a, b, n in (
        (G.mjGEOM_PLANE, G.mjGEOM_SPHERE, 1),
        (G.mjGEOM_PLANE, G.mjGEOM_CAPSULE, 2),
        (G.mjGEOM_PLANE, G.mjGEOM_ELLIPSOID, 1),
        (G.mjGEOM_PLANE, G.mjGEOM_CYLINDER, 4),
        (G.mjGEOM_PLANE, G.mjGEOM_BOX, 8),
        (G.mjGEOM_PLANE, G.mjGEOM_MESH, 4),
        (G.mjGEOM_SPHERE, G.mjGEOM_SPHERE, 1),
        (G.mjGEOM_SPHERE, G.mjGEOM_CAPSULE, 1),
        (G.mjGEOM_SPHERE, G.mjGEOM_CYLINDER, 1),
        (G.mjGEOM_SPHERE, G.mjGEOM_BOX, 1),
        (G.mjGEOM_CAPSULE, G.mjGEOM_CAPSULE, 2),
        (G.mjGEOM_CAPSULE, G.mjGEOM_BOX, 2),
        (G.mjGEOM_BOX, G.mjGEOM_BOX, 8),
    )
}
E = mujoco.mjtEq
EQUALITY_ROWS = {int(E.mjEQ_CONNECT): 3, int(E.mjEQ_WELD): 6, int(E.mjEQ_JOINT): 1, int(E.mjEQ_TENDON): 1}
S = mujoco.mjtState
# The CPU backend's state (mjSTATE_FULLPHYSICS) component by component, in mj_getState's order, and the
# Data field holding each (plugin state: MuJoCo Warp takes no plugins)
STATE_FIELDS = (
    (S.mjSTATE_TIME, "time"),
    (S.mjSTATE_QPOS, "qpos"),
    (S.mjSTATE_QVEL, "qvel"),
    (S.mjSTATE_ACT, "act"),
    (S.mjSTATE_HISTORY, "history"),
    (S.mjSTATE_PLASTIC, "plastic"),
)
OVERFLOW = mjw.OverflowType
# what fills a buffer; the solver's iteration limits are not overflows (MuJoCo stops iterating there too)
BUFFER_OVERFLOWS = int(OVERFLOW.ALL) & ~int(OVERFLOW.ITERATIONS) & ~int(OVERFLOW.LS_ITERATIONS)


def warp_device(device: str | None) -> str:
    """The Warp device: `device` ("cpu", "cuda", "cuda:1"), or CUDA when present, else the CPU."""
    wp.init()
    if device is None:
        if wp.is_cuda_available():
            return "cuda:0"
        warnings.warn(
            "warp backend: no CUDA device, so MuJoCo Warp runs on its CPU device (one thread, for parity "
            "tests); the cpu backend is faster here",
            stacklevel=3,
        )
        return "cpu"
    if device.startswith("cuda") and not wp.is_cuda_available():
        raise BackendError(f"warp backend: device '{device}' asked for, but Warp finds no CUDA device on this machine")
    try:
        return str(wp.get_device(device))
    except (ValueError, RuntimeError) as e:
        raise BackendError(f"warp backend: no Warp device '{device}': {e}") from e


@contextlib.contextmanager
def cpu_compile_options(device: str):
    """Warp's CPU device serves the parity tests: kernels it compiles inside this block are built without
    optimization, which halves the first compile (crazyflie: 19 s instead of 37 s) and slows stepping by
    about 20 %. CUDA kernels keep Warp's default (-O3), as does a level set in warp.config beforehand."""
    if device != "cpu" or wp.config.optimization_level is not None:
        yield
        return
    wp.config.optimization_level = 0
    try:
        yield
    finally:
        wp.config.optimization_level = None


def check_versions() -> None:
    """MuJoCo Warp must come from the MuJoCo release in use (it reads MjModel's fields as they are there)."""
    release = tuple(mujoco.__version__.split(".")[:2])
    if tuple(mjw.__version__.split(".")[:2]) != release:
        raise BackendError(
            f"warp backend: mujoco-warp {mjw.__version__} does not match mujoco {mujoco.__version__}; "
            f"install mujoco-warp {'.'.join(release)}.*"
        )


def buffer_sizes(m: mujoco.MjModel, mm) -> tuple[int, int]:
    """(nconmax, njmax): the most contacts one world can hold and its constraint rows, from the model `m`
    and its MuJoCo Warp model `mm` (whose candidate geom pairs are those its collision pass checks)."""
    pair_ids = mm.nxn_pairid_filtered.numpy()[:, 0]  # -2: only for collision sensors, -1: by contype, >= 0: <pair>
    pyramidal = m.opt.cone == mujoco.mjtCone.mjCONE_PYRAMIDAL
    nconmax, contact_rows = 0, 0
    for (g1, g2), pair_id in zip(mm.nxn_geom_pair_filtered.numpy(), pair_ids, strict=True):
        if pair_id == -2:
            continue
        kinds = tuple(sorted((int(m.geom_type[g1]), int(m.geom_type[g2]))))
        contacts = PAIR_CONTACTS.get(kinds, int(mujoco.mjMAXCONPAIR))
        condim = int(m.pair_dim[pair_id]) if pair_id >= 0 else int(max(m.geom_condim[g1], m.geom_condim[g2]))
        rows = (2 * (condim - 1) if condim > 1 else 1) if pyramidal else condim
        nconmax += contacts
        contact_rows += contacts * rows
    unsized = sorted({E(t).name for t in m.eq_type.tolist() if t not in EQUALITY_ROWS})
    if unsized:
        raise BackendError(f"warp backend: cannot size the constraint buffer for equality constraints {unsized}")
    equality_rows = sum(EQUALITY_ROWS[t] for t in m.eq_type.tolist())
    J = mujoco.mjtJoint
    hinge_slide = np.isin(m.jnt_type, (J.mjJNT_HINGE, J.mjJNT_SLIDE))
    ball = m.jnt_type == J.mjJNT_BALL
    limit_rows = 2 * int((m.jnt_limited & hinge_slide).sum()) + int((m.jnt_limited & ball).sum())
    limit_rows += 2 * int(m.tendon_limited.sum())
    friction_rows = m.nv + m.ntendon  # any dof or tendon may get friction loss in a model variant
    return max(nconmax, 1), max(equality_rows + friction_rows + limit_rows + contact_rows, 1)


def _model_fields(model: mujoco.MjModel) -> dict[str, np.ndarray]:
    """Every array of the model and its options (as `opt.NAME`)."""
    out = {n: getattr(model, n) for n in dir(model) if not n.startswith("_")}
    out.update({f"opt.{n}": np.asarray(getattr(model.opt, n)) for n in dir(model.opt) if not n.startswith("_")})
    return {n: v for n, v in out.items() if isinstance(v, np.ndarray)}


class MujocoWarpBackend:
    """`num_envs` worlds of one model on MuJoCo Warp. State and inputs are zero-copy torch views of
    Warp arrays on the Warp device, float32.

    qpos `(num_envs, nq)`, qvel `(num_envs, nv)`, act `(num_envs, na)`: current state.
    ctrl `(num_envs, nu)`, xfrc_applied `(num_envs, nbody, 6)`: inputs for the next step.
    """

    def __init__(
        self,
        model: str | Path | mujoco.MjModel,
        num_envs: int,
        model_variants: int = 1,
        device: str | None = None,
        nconmax: int | None = None,
        njmax: int | None = None,
    ):
        """`device`: the Warp device ("cpu", "cuda:0"); None: CUDA when present, else the CPU.
        `nconmax`, `njmax`: contacts and constraint rows per world; None: sized from the model (buffer_sizes)."""
        if num_envs < 1:
            raise ValueError(f"num_envs must be >= 1, got {num_envs}")
        if model_variants < 1:
            raise ValueError(f"model_variants must be >= 1, got {model_variants}")
        check_versions()
        self.device = warp_device(device)
        self.model: mujoco.MjModel = model if isinstance(model, mujoco.MjModel) else load_model(model)
        self.num_envs = num_envs
        # MuJoCo Warp never resets a diverged world (the CPU backend turns MuJoCo's reset off), and has no flag for it
        m = copy.copy(self.model)
        m.opt.disableflags &= ~int(mujoco.mjtDisableBit.mjDSBL_AUTORESET)
        self.variants = [self.model] if model_variants == 1 else [copy.copy(self.model) for _ in range(model_variants)]
        self.env_variant = torch.zeros(num_envs, dtype=torch.long)
        self._world_fields: list[tuple[torch.Tensor, torch.Tensor]] | None = None  # (per-world view, per-variant rows)

        data0 = mujoco.MjData(m)
        mujoco.mj_forward(m, data0)
        self.default_state = np.zeros(mujoco.mj_stateSize(m, STATE_SPEC))
        mujoco.mj_getState(m, data0, self.default_state, STATE_SPEC)
        with wp.ScopedDevice(self.device):
            try:
                mm = mjw.put_model(m)
            except NotImplementedError as e:
                raise BackendError(f"warp backend: MuJoCo Warp cannot simulate this model: {e}") from e
            mm.opt.warn_overflow = 0  # step() reports overflows as errors, not as kernel prints
            mm.opt.graph_conditional = bool(self.device == "cpu" or wp.is_conditional_graph_supported())
            sizes = buffer_sizes(m, mm)
            self.nconmax, self.njmax = nconmax or sizes[0], njmax or sizes[1]
            md = mjw.put_data(m, data0, nworld=num_envs, nconmax=self.nconmax, njmax=self.njmax)
        self.mjw_model, self.mjw_data = mm, md

        self.qpos = wp.to_torch(md.qpos)
        self.qvel = wp.to_torch(md.qvel)
        self.act = wp.to_torch(md.act)
        self.ctrl = wp.to_torch(md.ctrl)
        self.xfrc_applied = wp.to_torch(md.xfrc_applied)
        # The model's sensors, from the forward pass of the last physics step, i.e. of the state one
        # physics step before `qpos`/`qvel` (as on the CPU backend). (num_envs, nsensordata)
        self.sensordata = wp.to_torch(md.sensordata)
        self.sensordata.zero_()  # no physics step yet (put_data copied those of a forward pass)
        self._warmstart = wp.to_torch(md.qacc_warmstart)
        self._overflow = wp.to_torch(md.overflow)
        # views `(num_envs, size)` of the state components, in the CPU backend's state layout
        self._state_parts = [
            wp.to_torch(getattr(md, name)).view(num_envs, -1)
            for bit, name in STATE_FIELDS
            if mujoco.mj_stateSize(m, bit)
        ]
        self._default_state = torch.as_tensor(self.default_state, device=self.qpos.device)
        self._ok = torch.ones(num_envs, dtype=torch.bool, device=self.qpos.device)
        self._graphs: dict[int, wp.Graph] = {}  # CUDA graphs of `nstep` physics steps

    def step(self, nstep: int = 1) -> None:
        """Advance every world by `nstep` physics steps with the current inputs held: one CUDA graph launch
        (captured on the first call with this `nstep`), or a loop of `mjw.step` on Warp's CPU device."""
        with wp.ScopedDevice(self.device), cpu_compile_options(self.device):
            if self.device == "cpu":
                for _ in range(nstep):
                    mjw.step(self.mjw_model, self.mjw_data)
            else:
                if nstep not in self._graphs:
                    with wp.ScopedCapture() as capture:
                        for _ in range(nstep):
                            mjw.step(self.mjw_model, self.mjw_data)
                    assert capture.graph is not None
                    self._graphs[nstep] = capture.graph
                # on torch's stream, after what torch wrote into the inputs, before what it reads next
                stream = wp.stream_from_torch(torch.cuda.current_stream(self.qpos.device))
                wp.capture_launch(self._graphs[nstep], stream=stream)
        self._check_overflow()
        finite = torch.cat([p.isfinite().all(1, keepdim=True) for p in self._state_parts], dim=1)
        self._ok[:] = finite.all(1)

    def _check_overflow(self) -> None:
        """Stop with an error naming the buffer a world ran out of (MuJoCo Warp drops what does not fit)."""
        overflow = self._overflow & BUFFER_OVERFLOWS
        if not bool(overflow.any()):
            return
        worlds = overflow.nonzero().squeeze(-1)
        flags = 0
        for value in overflow[worlds].unique().tolist():
            flags |= value
        raise BackendError(
            f"warp backend: MuJoCo Warp ran out of buffer space in {len(worlds)} of {self.num_envs} worlds "
            f"(first: world {int(worlds[0])}): {', '.join(f.name or '' for f in OVERFLOW if f & flags)} overflow "
            f"(NEFC: constraint rows over njmax; NARROWPHASE, BROADPHASE, CCD: contacts over naconmax). "
            f"Buffers per world, sized from the model (buffer_sizes): nconmax {self.nconmax} contacts, "
            f"njmax {self.njmax} rows"
        )

    def set_env_variant(self, env_ids: torch.Tensor, variant_ids: torch.Tensor) -> None:
        """From the next step on, env `env_ids[k]` steps model variant `variant_ids[k]`: the per-world
        fields' rows of these worlds become the variant's values."""
        self.env_variant[env_ids.cpu()] = variant_ids.cpu()
        if self._world_fields is None:
            self._world_fields = self._make_world_fields()
        dev = self.qpos.device
        ids, rows = env_ids.to(dev), variant_ids.to(dev)
        for world, table in self._world_fields:
            world[ids] = table[rows]

    def _make_world_fields(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """A world dimension for each model field the variants change (read once, at the first
        `set_env_variant`: the startup events have written the variants by then)."""
        if len(self.variants) == 1:
            return []
        nominal = _model_fields(self.model)
        variants = [_model_fields(v) for v in self.variants]
        changed = [n for n in nominal if any(not np.array_equal(v[n], nominal[n]) for v in variants)]
        batched = {
            f"{prefix}{f.name}"
            for prefix, cls in (("", type(self.mjw_model)), ("opt.", type(self.mjw_model.opt)))
            for f in dataclasses.fields(cls)
            if getattr(f.type, "shape", ())[:1] == ("*",)
        }
        fixed = [n for n in changed if n not in batched]
        if fixed:
            raise BackendError(
                f"warp backend: the model variants differ in {fixed}, which MuJoCo Warp keeps one of for all "
                f"worlds (its Model gives them no world dimension; README: GPU simulation); use the cpu "
                f"backend, or randomize other fields"
            )
        out = []
        for name in changed:
            owner = self.mjw_model.opt if name.startswith("opt.") else self.mjw_model
            attr = name.removeprefix("opt.")
            shared = getattr(owner, attr)
            with wp.ScopedDevice(self.device):
                per_world = wp.array(np.repeat(shared.numpy(), self.num_envs, axis=0), dtype=shared.dtype)
            setattr(owner, attr, per_world)
            world = wp.to_torch(per_world)
            table = torch.as_tensor(np.stack([v[name] for v in variants]), device=world.device, dtype=world.dtype)
            out.append((world, table.view(len(variants), *world.shape[1:])))
        self._graphs.clear()  # captured with the shared fields
        return out

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The CPU backend's layout (float64 on the CPU), so a checkpoint resumes on either backend."""
        control = torch.cat((self.ctrl, self.xfrc_applied.reshape(self.num_envs, -1)), dim=1)
        return {
            "state": torch.cat(self._state_parts, dim=1).double().cpu(),
            "control": control.double().cpu()[:, None],
            "env_variant": self.env_variant.clone(),
        }

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._write_state(torch.arange(self.num_envs, device=self.qpos.device), state["state"])
        control = state["control"][:, 0].to(self.ctrl)
        nu = self.model.nu
        self.ctrl.copy_(control[:, :nu])
        self.xfrc_applied.copy_(control[:, nu:].view_as(self.xfrc_applied))
        self.set_env_variant(torch.arange(self.num_envs), state["env_variant"])

    def _write_state(self, ids: torch.Tensor, state: torch.Tensor) -> None:
        """Rows `ids` of the state components from `state` `(len(ids) or 1, nstate)` (CPU backend layout);
        the solver starts these worlds afresh (no warm start from another episode)."""
        state = state.to(self.qpos)
        start = 0
        for part in self._state_parts:
            part[ids] = state[:, start : start + part.shape[1]]
            start += part.shape[1]
        self._warmstart[ids] = 0.0

    def physics_ok(self) -> torch.Tensor:
        """`(num_envs,)` False where the last step diverged (NaN/inf), on the Warp device."""
        return self._ok

    def reset(self, env_ids: torch.Tensor, qpos: torch.Tensor, qvel: torch.Tensor) -> None:
        """Put `env_ids` at (qpos, qvel) with the model's default for everything else."""
        ids = env_ids.to(self.qpos.device)
        self._write_state(ids, self._default_state[None])
        self.qpos[ids] = qpos.to(self.qpos)
        self.qvel[ids] = qvel.to(self.qvel)

    def close(self) -> None:
        self._graphs.clear()
