"""Curricula: a level in [start_level, 1] that scales one of the task's ranges (the task says which
levels it reads: `curriculum_levels`, e.g. the hover's initial-state ranges, the walk's command ranges).
The runner calls `update` once per training iteration with the means over the episodes that ended in
it (BatchedEnv._episode_stats); a level moves only once enough episodes have ended since its last move,
as a rate over a few episodes is noise. Evaluation runs with no curricula: every level at 1."""

from __future__ import annotations

import torch

from config.validate import ConfigError
from sim.terms import registry


class Curriculum:
    def __init__(self, env, start_level: float, step: float):
        self.env = env
        self.start_level, self.step = start_level, step
        self.level = start_level
        self.window = torch.zeros(0, dtype=torch.float64)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"level": torch.tensor(self.level, dtype=torch.float64), "window": self.window}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.level = float(state["level"])
        self.window.copy_(state["window"])


class timeout_rate(Curriculum):
    """Up by `step` while at least `promote_timeout_rate` of the episodes run to the time limit, down
    (not below the start) while fewer than `demote_timeout_rate` do, over `window_fraction * num_envs`
    episodes (num_envs of every rank, in data-parallel training)."""

    def __init__(
        self,
        env,
        start_level: float = 0.3,
        step: float = 0.1,
        promote_timeout_rate: float = 0.8,
        demote_timeout_rate: float = 0.4,
        window_fraction: float = 0.5,
    ):
        super().__init__(env, start_level, step)
        self.promote, self.demote, self.window_fraction = promote_timeout_rate, demote_timeout_rate, window_fraction
        self.window = torch.zeros(2, dtype=torch.float64)  # (timeouts, episodes) since the last move

    def update(self, stats: dict) -> None:
        self.window += torch.tensor([stats["end/timeout"] * stats["count"], stats["count"]], dtype=torch.float64)
        timeouts, count = self.window.tolist()
        if count >= self.env.num_envs_total * self.window_fraction:
            rate = timeouts / count
            if rate >= self.promote:
                self.level = min(1.0, self.level + self.step)
            elif rate < self.demote:
                self.level = max(self.start_level, self.level - self.step)
            self.window.zero_()


class reward_share(Curriculum):
    """Up by `step` once `num_envs` episodes have ended, if they earned at least `promote_share` of the
    reward term `reward`'s maximum (its weight times the episode length) and at least
    `promote_timeout_rate` of them ran to the time limit."""

    def __init__(
        self,
        env,
        reward: str,
        start_level: float = 0.4,
        step: float = 0.1,
        promote_share: float = 0.7,
        promote_timeout_rate: float = 0.8,
    ):
        super().__init__(env, start_level, step)
        if reward not in env.reward_weights:
            raise ConfigError(f"reward_share: no reward term '{reward}' (terms: {', '.join(env.reward_weights)})")
        self.reward, self.promote_share, self.promote_timeout_rate = reward, promote_share, promote_timeout_rate
        self.window = torch.zeros(4, dtype=torch.float64)  # (earned, best, timeouts, episodes) since the last decision

    def update(self, stats: dict) -> None:
        n = stats["count"]
        best = self.env.reward_weights[self.reward] * stats["length_s"] * n
        self.window += torch.tensor(
            [stats[f"reward/{self.reward}"] * n, best, stats["end/timeout"] * n, n], dtype=torch.float64
        )
        earned, best, timeouts, count = self.window.tolist()
        if count >= self.env.num_envs_total:
            if best > 0 and earned / best >= self.promote_share and timeouts / count >= self.promote_timeout_rate:
                self.level = min(1.0, self.level + self.step)
            self.window.zero_()


CURRICULA = registry(timeout_rate, reward_share)
