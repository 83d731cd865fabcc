"""Real-time scheduling where the system permits it (root, CAP_SYS_NICE or an rtprio limit), as a robot's
control computer runs its control loop and serial driver: SCHED_FIFO threads preempt every ordinary
process at once, so a busy machine (a training run on every core) does not delay them. Where it is not
permitted the thread keeps its ordinary scheduling and the caller says so; nothing fails.

Only threads that sleep most of the time may run so: a SCHED_FIFO thread that never blocks holds its
core (the kernel's RT throttling still leaves other tasks 5 % of it).
"""

from __future__ import annotations

import os


def set_realtime(priority: int, tid: int = 0) -> str:
    """SCHED_FIFO at `priority` (1..99) for thread `tid` (0: the calling one). Returns '' when done, else
    why not (the reason the system gave)."""
    if not hasattr(os, "sched_setscheduler"):
        return "this system has no SCHED_FIFO"
    try:
        os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority))
    except OSError as e:  # PermissionError without the privilege
        return e.strerror or type(e).__name__
    return ""


def set_process_realtime(priority: int) -> str:
    """SCHED_FIFO for every thread of this process (those started later inherit it). All of them, not only
    the control thread: a Python thread that holds the GIL and is preempted by a busy machine would hold up
    a real-time thread that waits for the GIL. Returns '' when done for all, else why not."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # no /proc: this thread, and the ones it starts
        tids = [0]
    reasons = set()
    for tid in tids:
        why_not = set_realtime(priority, tid)
        if why_not and os.path.exists(f"/proc/self/task/{tid}"):  # a thread that ended meanwhile needs nothing
            reasons.add(why_not)
    return "; ".join(sorted(reasons))
