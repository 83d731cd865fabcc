"""Task metrics from a log: the task's own measures (sim.tasks: `Task.log_metrics`, one class per task
module) fed the logged observations, the newest frame of each term unscaled by the PolicySpec, so
they need no sensor topic; thresholds from the task config `s2r eval` uses. Replay knows no task:
it looks the measures up by the spec's task name."""

from __future__ import annotations

import numpy as np

from deploy.spec import PolicySpec
from replay.dynamics_gap import StreamingStats
from replay.shift import term_slices


def current_frames(spec: PolicySpec, obs: np.ndarray) -> dict[str, np.ndarray]:
    """(n, obs_dim) -> {term: (n, size)} newest frame of each term, unscaled to the term's units."""
    out = {}
    for t, sl in zip(spec.obs, term_slices(spec).values(), strict=True):
        out[t.name] = obs[:, sl.start : sl.start + t.size] / np.asarray(t.scale)
    return out


class TaskMetrics:
    """The logged control steps and the task's measures on them (sim/evaluate.py's definitions,
    streamed: rates per step or per event instead of per episode)."""

    def __init__(self, spec: PolicySpec, cfg):
        from sim.tasks import task_entry

        self.spec = spec
        self.rows = 0
        self.task = task_entry(spec.task).log_metrics(spec, cfg, StreamingStats)

    @property
    def base_velocity_settle_s(self) -> float | None:
        """Set when the task tracks a commanded base velocity, which the policy does not observe: then
        base_tracking_pass measures it from the log's /cmd_vel and /odom, from this long after each
        command change."""
        return getattr(self.task, "base_velocity_settle_s", None)

    def add(self, obs: np.ndarray) -> None:
        """(n, obs_dim) logged observations of running control steps."""
        self.rows += len(obs)
        self.task.add(current_frames(self.spec, obs))

    def add_base_velocity_error(self, err_mps: np.ndarray) -> None:
        self.task.add_base_velocity_error(err_mps)

    def summary(self, period_s: float) -> dict:
        return {"rows": self.rows, "logged_s": self.rows * period_s, **self.task.summary()}
