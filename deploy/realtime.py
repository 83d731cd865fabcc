"""Real-time scheduling where the system permits it (root, CAP_SYS_NICE or an rtprio limit), as a robot's
control computer runs its control loop and serial driver: SCHED_FIFO threads preempt every ordinary
process at once, so a busy machine (a training run on every core) does not delay them. Where it is not
permitted the thread keeps its ordinary scheduling and the caller says so; nothing fails.

Only threads that sleep most of the time may run so: a SCHED_FIFO thread that never blocks holds its
core (the kernel's RT throttling still leaves other tasks 5 % of it).

Python's cyclic garbage collector is the other source of long pauses: a full collection walks every
object the process holds, ~200 k after importing rclpy, MuJoCo and onnxruntime, and takes 50-65 ms on
this project's 2-core machine, with the GIL held, stopping every thread. `freeze_gc` moves everything the
start-up built out of its reach, so a loop's collections walk only what the loop itself made.
"""

from __future__ import annotations

import gc
import os
import resource


def _thread_ids() -> list[int]:
    try:
        return [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # no /proc: this thread, and the ones it starts
        return [0]


def _for_every_thread(apply) -> str:
    """`apply(tid)` for each thread of this process; '' when done for all, else the reasons, once each.
    A thread that ended meanwhile needs nothing."""
    reasons = set()
    for tid in _thread_ids():
        try:
            apply(tid)
        except OSError as e:  # PermissionError without the privilege; EINVAL for a CPU set not allowed here
            if os.path.exists(f"/proc/self/task/{tid}") or tid == 0:
                reasons.add(e.strerror or type(e).__name__)
    return "; ".join(sorted(reasons))


def set_process_realtime(priority: int) -> str:
    """SCHED_FIFO for every thread of this process (those started later inherit it). All of them, not only
    the control thread: a Python thread that holds the GIL and is preempted by a busy machine would hold up
    a real-time thread that waits for the GIL. Returns '' when done for all, else why not."""
    if not hasattr(os, "sched_setscheduler"):
        return "this system has no SCHED_FIFO"
    why_not = _for_every_thread(lambda tid: os.sched_setscheduler(tid, os.SCHED_FIFO, os.sched_param(priority)))
    return why_not and f"{why_not}: {_missing_permission(priority)}"


def _missing_permission(priority: int) -> str:
    """What the system lacks for SCHED_FIFO at `priority`, by name: the rtprio limit, the capability."""
    soft, _ = resource.getrlimit(resource.RLIMIT_RTPRIO)
    limit = "unlimited" if soft == resource.RLIM_INFINITY else str(soft)
    return (
        f"this user's rtprio limit (RLIMIT_RTPRIO, ulimit -r) is {limit}, below priority {priority}, "
        "and the process lacks CAP_SYS_NICE: raise the limit in /etc/security/limits.d, or run with that capability"
    )


def set_process_affinity(cpus: list[int]) -> str:
    """Pin every thread of this process (and those it starts later) to `cpus`, e.g. cores kept free of other
    work with isolcpus. Returns '' when done for all, else why not."""
    if not hasattr(os, "sched_setaffinity"):
        return "this system has no CPU affinity"
    return _for_every_thread(lambda tid: os.sched_setaffinity(tid, cpus))


def freeze_gc() -> None:
    """Collect once, then move every object alive now into the collector's permanent generation: the
    loop's later collections never walk them (no 50 ms full-collection pause). Call when start-up is done."""
    gc.collect()
    gc.freeze()


def realtime_permitted() -> str:
    """'' when this process may use SCHED_FIFO, else why not: tried on the calling thread and undone."""
    if not hasattr(os, "sched_setscheduler"):
        return "this system has no SCHED_FIFO"
    policy, param = os.sched_getscheduler(0), os.sched_getparam(0)
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
    except OSError as e:
        return e.strerror or type(e).__name__
    os.sched_setscheduler(0, policy, param)
    return ""
