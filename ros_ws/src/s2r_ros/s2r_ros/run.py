"""How every s2r node process starts, spins and stops.

rclpy's own SIGINT/SIGTERM handler would close the context at once; these nodes must still act on
the way out (policy_node sends its safe command), so the signal only sets a flag, the spin loop ends,
`stop(node)` runs with the context alive, and then rclpy shuts down.
"""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable

import rclpy
from rclpy.signals import SignalHandlerOptions

from deploy.realtime import freeze_gc, set_process_affinity, set_process_realtime

try:  # rclpy's C++ events executor (Jazzy and later) wakes callbacks several times faster
    from rclpy.experimental import EventsExecutor as Executor
except ImportError:  # Humble
    from rclpy.executors import SingleThreadedExecutor as Executor


REALTIME_PARAMETERS = {  # every node with a loop declares these (name: default)
    "realtime_priority": 50,  # SCHED_FIFO priority of the node's threads where permitted; 0: ordinary scheduling
    "cpu_affinity": [-1],  # CPUs the node's threads may run on, e.g. [2, 3] (isolated cores); [-1]: any
}


def go_realtime(node) -> str:
    """Ready the node's process for its loop, once the node is built (start-up, imports and model loading
    ran at ordinary priority): the garbage collector no longer walks what start-up made, and every thread
    gets real-time scheduling and the CPU affinity its parameters ask for, where the system permits it
    (deploy/realtime.py). Logs, and returns for the node's diagnostics, what it got."""
    freeze_gc()
    priority = int(node.get_parameter("realtime_priority").value)
    cpus = [int(c) for c in node.get_parameter("cpu_affinity").value if c >= 0]
    got, refused = [], False
    if priority > 0:
        why_not = set_process_realtime(priority)
        refused |= bool(why_not)
        got.append(
            f"SCHED_FIFO {priority} not permitted ({why_not}; README: the robot's computer)"
            if why_not
            else f"SCHED_FIFO {priority}"
        )
    if cpus:
        why_not = set_process_affinity(cpus)
        refused |= bool(why_not)
        got.append(f"CPUs {cpus} refused ({why_not})" if why_not else f"CPUs {cpus}")
    status = ", ".join(got) or "off"
    (node.get_logger().warning if refused else node.get_logger().info)(f"real-time scheduling: {status}")
    return status


def run(
    name: str, make_node: Callable, start: Callable = lambda node: None, stop: Callable = lambda node: None, args=None
) -> int:
    """Exit code 2, with the reason on stderr, when `make_node()` refuses to start; else 0 after a signal."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    try:
        node = make_node()
    except Exception as e:  # noqa: BLE001 - a refusal to start is a named error, and nothing is sent
        print(f"{name}: refusing to start: {e}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    stopping = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stopping.set())
    executor = Executor()
    executor.add_node(node)
    start(node)
    try:
        while not stopping.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.05)
    finally:
        stop(node)
        node.destroy_node()
        rclpy.try_shutdown()
    return 0
