"""Ranking of candidate policies: `s2r eval`-style simulated evaluation of each under the task's full
randomization, combined with its shift on the log:  score = sim_score - SHIFT_WEIGHT * max(0, shift - 1),
where sim_score is the task's own score of the evaluation (sim.tasks: `Task.log_metrics.score`) and
shift the mean over observation terms of the RMS z-score (1 = as in training)."""

from __future__ import annotations

from replay.candidates import Candidate

SHIFT_WEIGHT = 0.1
SUCCESS_RATE = "success rate"


def sim_score(task: str, result: dict) -> float:
    """The task's score of an `s2r eval` result."""
    from sim.tasks import task_entry

    return task_entry(task).log_metrics.score(result)


def sim_score_definition() -> str:
    """sim_score in words: the success rate, and how each task that scores otherwise does (named by the
    first word of its name)."""
    from sim.tasks import TASKS

    other = [
        f"{name.split('-')[0]}: {t.log_metrics.score_definition}"
        for name, t in TASKS.items()
        if t.log_metrics.score_definition != SUCCESS_RATE
    ]
    return SUCCESS_RATE + (f" ({'; '.join(other)})" if other else "")


def rank(candidates: list[Candidate], shift: dict, task: str, episodes: int, seed: int = 1) -> list[dict]:
    """Every candidate evaluated in the same randomized simulation (the task's default config, full
    ranges), combined with its shift on the log; best first."""
    from sim.evaluate import evaluate
    from sim.tasks import default_cfg

    out = []
    for c in candidates:
        result = evaluate(c.path, episodes=episodes, seed=seed, task_cfg=default_cfg(task))
        s, sh = sim_score(task, result), shift[c.name]["score"]
        out.append(
            {
                "policy": c.name,
                "path": str(c.path),
                "score": s - SHIFT_WEIGHT * max(0.0, sh - 1.0),
                "sim_score": s,
                "shift": sh,
                "sim_eval": {k: v for k, v in result.items() if isinstance(v, (int, float)) and k != "eval_wall_s"},
            }
        )
    return sorted(out, key=lambda r: -r["score"])
