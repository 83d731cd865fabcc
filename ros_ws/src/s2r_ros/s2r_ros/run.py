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

from deploy.realtime import set_process_realtime

try:  # rclpy's C++ events executor (Jazzy and later) wakes callbacks several times faster
    from rclpy.experimental import EventsExecutor as Executor
except ImportError:  # Humble
    from rclpy.executors import SingleThreadedExecutor as Executor


def go_realtime(node, priority: int) -> str:
    """Real-time scheduling for every thread of the node's process (deploy/realtime.py), where the system
    permits it; `priority` 0: ordinary scheduling. Logs and returns what it got, for the node's diagnostics.
    Called once the node is built: its start-up (imports, model loading) runs at ordinary priority."""
    if priority <= 0:
        return "off"
    why_not = set_process_realtime(priority)
    got = f"not permitted ({why_not})" if why_not else f"SCHED_FIFO {priority}"
    node.get_logger().info(f"real-time scheduling: {got}")
    return got


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
