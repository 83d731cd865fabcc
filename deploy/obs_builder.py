"""Builds the policy's observation vector from named raw signals, exactly as the PolicySpec says."""

from __future__ import annotations

from typing import cast

import numpy as np

from deploy.arrays import concat, constant_like
from deploy.spec import PolicySpec, SpecError


class ObsBuilder:
    """Scale, clip and stack history for a batch of robots: `(batch, obs_dim)` out.

    Signals are arrays `(batch, term.size)` keyed by term name, in the term's units. `like` picks the
    array kind (a numpy array, or a torch tensor for its dtype and device). History is term-major,
    newest first; after `reset`, the next frame fills the whole history of the reset rows.
    """

    def __init__(self, spec: PolicySpec, batch: int = 1, like=None):
        self.spec = spec
        self.batch = batch
        like = np.zeros(1, np.float32) if like is None else like
        self._scale = {t.name: constant_like(t.scale, like) for t in spec.obs if any(v != 1.0 for v in t.scale)}
        self._history = {
            t.name: constant_like(np.zeros((batch, t.history, t.size)), like) for t in spec.obs if t.history > 1
        }
        self._fresh = constant_like(np.ones(batch), like) > 0  # (batch,) bool

    def state_dict(self) -> dict:
        """History buffers and reset flags (arrays of the builder's kind), to save and restore a run."""
        return {"fresh": self._fresh, **{f"history/{k}": v for k, v in self._history.items()}}

    def load_state_dict(self, state: dict) -> None:
        self._fresh[...] = state["fresh"]
        for k, v in self._history.items():
            v[...] = state[f"history/{k}"]

    def reset(self, env_ids=None) -> None:
        if env_ids is None:
            self._fresh[:] = True
        else:
            self._fresh[env_ids] = True

    def __call__(self, signals: dict):
        parts = []
        for term in self.spec.obs:
            x = signals.get(term.name)
            if x is None:
                raise SpecError(f"ObsBuilder: no signal '{term.name}' (have {sorted(signals)})")
            if tuple(x.shape) != (self.batch, term.size):
                raise SpecError(
                    f"ObsBuilder: signal '{term.name}' has shape {tuple(x.shape)}, spec says {(self.batch, term.size)}"
                )
            scale = self._scale.get(term.name)
            frame = x if scale is None else x * scale
            if term.clip is not None:
                frame = frame.clip(-term.clip, term.clip)
            if term.history > 1:
                hist = self._history[term.name]
                if isinstance(hist, np.ndarray):
                    hist[:, 1:] = hist[:, :-1].copy()
                else:
                    hist[:, 1:] = hist[:, :-1].clone()
                hist[:, 0] = frame
                fresh = self._fresh  # (batch,) bool
                if fresh.any():
                    hist[fresh] = frame[fresh][:, None]  # pyright: ignore[reportArgumentType]  same array kind
                frame = hist.reshape(self.batch, -1)
            parts.append(frame)
        self._fresh[:] = False
        return concat(parts, axis=-1)


LAST_ACTION_TERM = "last_action"  # filled with the policy's own previous raw action, as training does


class PolicyInput:
    """A robot's readings -> the policy's observation, as the controller builds it every step: the term
    signals, the policy's own previous raw action as `last_action`, stacked history. The robot's
    Controller and the replay of foreign logs share it, so both build the same observation."""

    def __init__(self, spec: PolicySpec, signals):
        self.spec, self.signals = spec, signals
        self.builder = ObsBuilder(spec, batch=1)
        self._fill_last_action = any(t.name == LAST_ACTION_TERM for t in spec.obs)
        self.last_action = np.zeros((1, spec.action_dim), dtype=np.float32)

    def reset(self) -> None:
        """A new start: the next frame fills the history, the last action is zero (as after a training reset)."""
        self.builder.reset()
        self.last_action[:] = 0.0

    def __call__(self, readings: dict) -> np.ndarray:
        """(1, obs_dim) float32 observation from one step's readings."""
        frame = {k: np.asarray(v, dtype=np.float32).reshape(1, -1) for k, v in self.signals(readings).items()}
        if self._fill_last_action and LAST_ACTION_TERM not in frame:
            frame[LAST_ACTION_TERM] = self.last_action
        return cast(np.ndarray, self.builder(frame))  # a numpy builder (no `like`) gives numpy arrays

    def acted(self, action: np.ndarray) -> None:
        """The raw action the policy took on this step's observation: the next step's `last_action`."""
        self.last_action = np.asarray(action, dtype=np.float32).reshape(1, -1).copy()
