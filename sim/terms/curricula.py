"""Curricula: a level in [start_level, 1] that scales one of the task's ranges (the task says which
levels it reads: `curriculum_levels`, e.g. the hover's initial-state ranges, the walk's command ranges).
The runner calls `update` once per training iteration with the means over the episodes that ended in
it (BatchedEnv._episode_stats); a level moves only once `window_episodes` episodes have ended since its
last decision, as a rate over a few episodes is noise. The window is a count of episodes, not a share of
the envs: its noise is the same at any env count, and more envs reach a decision sooner (as half of 512
envs, 256 episodes, the hover's curriculum took iterations 53 to 173 to reach full range; with 64, 53 to
77: README). A window is a fair sample of episodes only if they end spread over time: envs started
together reach the time limit together, every episode length, and a window between two such bursts
holds only falls (the walk with 256-episode windows stayed at 60 % from iteration 50 to past 140).
The walk's training therefore starts its envs at random steps of their first episodes
(TrainCfg.spread_episodes). Evaluation runs with no curricula: every level at 1."""

from __future__ import annotations

import torch

from config.validate import ConfigError
from sim.terms import registry


class Curriculum:
    def __init__(self, env, start_level: float, step: float, window_episodes: int, sums: int):
        if window_episodes < 1:
            raise ConfigError(f"{type(self).__name__}: window_episodes must be >= 1 (got {window_episodes})")
        self.env = env
        self.start_level, self.step, self.window_episodes = start_level, step, window_episodes
        self.level = start_level
        self.window = torch.zeros(sums, dtype=torch.float64)  # sums since the last decision; the last: episodes

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"level": torch.tensor(self.level, dtype=torch.float64), "window": self.window}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.level = float(state["level"])
        self.window.copy_(state["window"])

    def _add(self, *sums: float) -> list[float] | None:
        """Add this iteration's sums; once the window is full, return them (and empty it) for a decision."""
        self.window += torch.tensor(sums, dtype=torch.float64)
        if self.window[-1] < self.window_episodes:
            return None
        full = self.window.tolist()
        self.window.zero_()
        return full


class timeout_rate(Curriculum):
    """Up by `step` while at least `promote_timeout_rate` of the episodes run to the time limit, down
    (not below the start) while fewer than `demote_timeout_rate` do."""

    def __init__(
        self,
        env,
        start_level: float = 0.3,
        step: float = 0.1,
        promote_timeout_rate: float = 0.8,
        demote_timeout_rate: float = 0.4,
        window_episodes: int = 64,
    ):
        super().__init__(env, start_level, step, window_episodes, sums=2)  # (timeouts, episodes)
        self.promote, self.demote = promote_timeout_rate, demote_timeout_rate

    def update(self, stats: dict) -> None:
        full = self._add(stats["end/timeout"] * stats["count"], stats["count"])
        if full is None:
            return
        rate = full[0] / full[1]
        if rate >= self.promote:
            self.level = min(1.0, self.level + self.step)
        elif rate < self.demote:
            self.level = max(self.start_level, self.level - self.step)


class reward_share(Curriculum):
    """Up by `step` if the episodes earned at least `promote_share` of the reward term `reward`'s maximum
    (its weight times the episode length) and at least `promote_timeout_rate` of them ran to the time
    limit."""

    def __init__(
        self,
        env,
        reward: str,
        start_level: float = 0.4,
        step: float = 0.1,
        promote_share: float = 0.7,
        promote_timeout_rate: float = 0.8,
        window_episodes: int = 256,
    ):
        super().__init__(env, start_level, step, window_episodes, sums=4)  # (earned, best, timeouts, episodes)
        if reward not in env.reward_weights:
            raise ConfigError(f"reward_share: no reward term '{reward}' (terms: {', '.join(env.reward_weights)})")
        self.reward, self.promote_share, self.promote_timeout_rate = reward, promote_share, promote_timeout_rate

    def update(self, stats: dict) -> None:
        n = stats["count"]
        best = self.env.reward_weights[self.reward] * stats["length_s"] * n
        full = self._add(stats[f"reward/{self.reward}"] * n, best, stats["end/timeout"] * n, n)
        if full is None:
            return
        earned, best, timeouts, count = full
        if best > 0 and earned / best >= self.promote_share and timeouts / count >= self.promote_timeout_rate:
            self.level = min(1.0, self.level + self.step)


CURRICULA = registry(timeout_rate, reward_share)
