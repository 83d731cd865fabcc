"""Turns raw policy actions into actuator commands, exactly as the PolicySpec says."""

from __future__ import annotations

import numpy as np

from deploy.arrays import constant_like
from deploy.spec import PolicySpec


class ActionMapper:
    """command = clip(offset + scale * clip(action, -clip, clip), low, high), `(batch, n)` in and out."""

    def __init__(self, spec: PolicySpec, like=None):
        a = spec.action
        like = np.zeros(1, np.float32) if like is None else like
        self.clip = a.clip
        self.scale = constant_like(a.scale, like)
        self.offset = constant_like(a.offset, like)
        self.low = constant_like(a.low, like)
        self.high = constant_like(a.high, like)

    def __call__(self, action):
        command = self.offset + self.scale * action.clip(-self.clip, self.clip)
        return command.clip(self.low, self.high)
