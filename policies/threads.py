"""How many torch threads the learner's update runs on: measured while training, not guessed.

Every core wins on a quiet machine for the larger networks (walk, 2 cores, 2026-12-06: a PPO update 0.9 s on
two threads against 1.6 s on one). One thread wins as soon as other work shares the cores, since each step
of a multi-threaded update waits for its slowest thread (the same update under two other trainings: 4.1 s on
one thread against 10.7 s on two; a SAC update beside one other process: 33 ms against 1.1 s). Load moves
within minutes on a shared machine, so the runner times both and keeps the faster.

The update's results do not depend on the choice: the same minibatch gives the same bits on one thread or
two (tests/test_training.py checks it on a whole run).
"""

from __future__ import annotations

import torch

FIRST_RETRY = 4  # iterations before the slower count is timed again; doubles while it stays slower
LAST_RETRY = 64


class UpdateThreads:
    """`setting` 0: the faster of one thread and all (`torch.get_num_threads()`), re-timed at growing
    intervals; N > 0: always N. Use as `threads = choice.next()`, update on `threads`, `choice.record(s)`."""

    def __init__(self, setting: int):
        cores = torch.get_num_threads()
        self.candidates = (1, cores) if setting == 0 and cores > 1 else (setting or cores,)
        self.seconds: dict[int, float] = {}  # latest update time on each count
        self.current = self.candidates[0]
        self._retry_in = self._interval = FIRST_RETRY

    def _best(self) -> int:
        return min(self.seconds, key=self.seconds.__getitem__)

    def next(self) -> int:
        """The count for this iteration's update: an untimed one, the slower one when it is due again, else
        the faster one."""
        untimed = [c for c in self.candidates if c not in self.seconds]
        if untimed:
            self.current = untimed[0]
            return self.current
        best = self._best()
        self._retry_in -= 1
        if self._retry_in <= 0:
            self._interval = min(2 * self._interval, LAST_RETRY)
            self._retry_in = self._interval
            self.current = next(c for c in self.candidates if c != best)
        else:
            self.current = best
        return self.current

    def record(self, seconds: float) -> None:
        """The wall time of the update just run on `self.current` threads."""
        best_before = self._best() if self.seconds else None
        self.seconds[self.current] = seconds
        if best_before is not None and self._best() != best_before:
            self._retry_in = self._interval = FIRST_RETRY  # the machine changed: watch it closely again
