"""The emulators' end of a pseudo-terminal that stands in for a robot's serial port.

A host opens the slave path as it would /dev/ttyUSB0 and sets its baud rate there; the emulator reads
and writes the master and, as on Linux the master reports the slave's termios, knows that baud rate
(`host_baud`), so it can answer only a host set to the device's own rate, as real electronics do.
"""

from __future__ import annotations

import fcntl
import os
import struct
import termios
import threading
import tty
from collections.abc import Callable

BITS_PER_BYTE = 10  # 8N1: start + 8 data + stop
PACE_CHUNK_S = 1e-3  # an emulator writes its bytes in chunks of about this much wire time
_TCGETS2 = 0x802C542A  # Linux x86-64/aarch64: termios2, whose c_ospeed holds a non-standard baud rate
_SPEED_BY_CONSTANT = {getattr(termios, n): int(n[1:]) for n in dir(termios) if n[:1] == "B" and n[1:].isdigit()}


class PtyPort:
    def __init__(self) -> None:
        self.master = self.slave = -1
        self.path = ""
        self.stop_event = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def running(self) -> bool:
        return bool(self._threads)

    def start(self, threads: dict[str, Callable[[], None]]) -> str:
        """A new pty, then the emulator's threads {name: loop} (each runs until `stop_event`); its slave path."""
        path = self.open()
        self.stop_event.clear()
        self._threads = [threading.Thread(target=f, name=n, daemon=True) for n, f in threads.items()]
        for t in self._threads:
            t.start()
        return path

    def stop(self) -> None:
        """Stop the threads, then close the pty."""
        self.stop_event.set()
        for t in self._threads:
            t.join()
        self._threads = []
        self.close()

    def open(self) -> str:
        """A new pty; returns its slave path. The slave stays open here too: hosts may close and reopen it."""
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self.slave)
        return self.path

    def close(self) -> None:
        """The pty goes away: a host holding it open gets an I/O error."""
        for fd in (self.master, self.slave):
            if fd >= 0:
                os.close(fd)
        self.master = self.slave = -1

    def host_baud(self) -> int:
        """The baud rate the host set on the slave side."""
        speed = termios.tcgetattr(self.master)[5]
        if speed in _SPEED_BY_CONSTANT:
            return _SPEED_BY_CONSTANT[speed]
        buf = bytearray(44)  # struct termios2: 4 flags, c_line, c_cc[19], c_ispeed, c_ospeed
        fcntl.ioctl(self.master, _TCGETS2, buf)
        return struct.unpack_from("I", buf, 40)[0]
