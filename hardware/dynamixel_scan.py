"""Link diagnosis: which Dynamixel servos answer on a port, at which baud rate, and what they report.

"No status packet" says nothing about the cause; a scan does. One broadcast ping per baud rate finds
every servo listening at that rate in a fraction of a second (servos answer it one after another in ID
order), so the usual rates are all tried in about a second; IDs that were expected but stayed silent get
pings of their own where the bus is alive. The result is structured (`ScanResult`) and `format_scan`
turns it into sentences such as "no servo answered at 57600 baud; IDs 1-5 answer at 1000000 baud",
"ID 4 missing", "ID 3 reports overload (hardware error 0x20)".
"""

from __future__ import annotations

import select
from dataclasses import dataclass

from dynamixel_sdk import COMM_SUCCESS, PortHandler, Protocol2PacketHandler

from hardware import dynamixel_table as dt

# most likely first; 4.5 Mbaud is left out because dynamixel-sdk's port cannot be set to it
SCAN_BAUDS = (57600, 1_000_000, 115200, 2_000_000, 3_000_000, 4_000_000, 9600)
SCAN_IDS = tuple(range(0, 21))
BROADCAST_ID = 0xFE
INST_PING = 0x01
PING_STATUS_BYTES = 14  # header 4, ID, length 2, instruction, error, model number 2, firmware, CRC 2
PING_SLOT_S = 3e-3  # time per ID that dynamixel-sdk allows for answers to a broadcast ping
FTDI_LATENCY_S = 0.016  # USB adapters' default latency timer, which dynamixel-sdk assumes


class Port(PortHandler):
    """dynamixel-sdk's port with the adapter's latency as a setting: an answer is awaited for its bytes'
    time plus 2 x `usb_latency_s` + 2 ms, which is the SDK's own rule with its fixed 16 ms made a parameter
    (a U2D2 set to 1 ms can fail faster; a loaded test machine may need more)."""

    def __init__(self, port_name: str, usb_latency_s: float = FTDI_LATENCY_S):
        super().__init__(port_name)
        self.usb_latency_s = usb_latency_s

    def setPacketTimeout(self, packet_length):  # noqa: N802 (the SDK's name)
        self.packet_start_time = self.getCurrentTime()
        self.packet_timeout = self.tx_time_per_byte * packet_length + 2e3 * self.usb_latency_s + 2.0

    def readPort(self, length):  # noqa: N802 (the SDK's name)
        """The SDK calls this in a loop until an answer is complete or its time is up, and the port does not
        block: with no byte waiting, sleep until one comes (or that time is up) instead of spinning. A
        spinning driver holds a core, and at real-time priority it starves the kernel's tty work that
        delivers the answer (a host at SCHED_FIFO reading `s2r hil` at 100 Hz: 199 of 1380 sync reads timed
        out; waiting here, none of 1501, round trip p99 4.9 ms against the wire's 3.0 ms)."""
        ser = self.ser  # None until the port is open: the SDK's own read then fails as it does without this
        if ser is not None and not ser.in_waiting:
            wait_ms = self.packet_timeout - self.getTimeSinceStart()
            select.select([ser.fileno()], [], [], max(wait_ms, 0.0) / 1e3)
        return super().readPort(length)


@dataclass(frozen=True)
class FoundServo:
    id: int
    baud: int
    model_number: int
    hardware_error: int | None  # Hardware Error Status; None: the alert bit was set but reading it failed


@dataclass(frozen=True)
class ScanResult:
    port: str
    bauds: tuple[int, ...]  # tried, in this order
    ids: tuple[int, ...]  # the ID range the broadcast pings waited for
    found: tuple[FoundServo, ...]
    expected_ids: tuple[int, ...] = ()
    expected_baud: int | None = None

    def ids_at(self, baud: int) -> list[int]:
        return sorted(s.id for s in self.found if s.baud == baud)

    def live_bauds(self) -> list[int]:
        return [b for b in self.bauds if self.ids_at(b)]


def scan_link(
    port_name: str,
    bauds: tuple[int, ...] = SCAN_BAUDS,
    ids: tuple[int, ...] = SCAN_IDS,
    expected_ids: tuple[int, ...] = (),
    expected_baud: int | None = None,
    usb_latency_s: float = FTDI_LATENCY_S,
) -> ScanResult:
    """Ping `port_name` at each baud rate (the expected one first); `usb_latency_s` as for `Port`."""
    if expected_baud is not None:
        bauds = (expected_baud,) + tuple(b for b in bauds if b != expected_baud)
    ph = Protocol2PacketHandler()  # what PacketHandler(2.0) gives
    port = Port(port_name, usb_latency_s)
    found: list[FoundServo] = []
    try:
        for baud in bauds:
            if not port.setBaudRate(baud):
                raise ValueError(f"{baud} baud: not a rate dynamixel-sdk can set on {port_name}")
            byte_s = 10.0 / baud
            window_s = 2 * usb_latency_s + 0.002 + (max(ids) + 1) * (PING_STATUS_BYTES * byte_s + PING_SLOT_S)
            answers = _broadcast_ping(port, ph, window_s)
            if answers:  # the bus is alive at this rate: a second look, and pings for expected IDs not heard
                answers = _broadcast_ping(port, ph, window_s) | answers
                for i in expected_ids:
                    for _ in range(2):
                        if i in answers:
                            break
                        model, result, error = ph.ping(port, i)
                        if result == COMM_SUCCESS:
                            answers[i] = (model, error)
            for i, (model, error) in sorted(answers.items()):
                hardware_error = _hardware_error(port, ph, i) if error & dt.ERROR_ALERT_BIT else 0
                found.append(FoundServo(i, baud, model, hardware_error))
    finally:
        if port.is_open:
            port.closePort()
    return ScanResult(port_name, tuple(bauds), tuple(ids), tuple(found), tuple(expected_ids), expected_baud)


def _broadcast_ping(port: Port, ph: Protocol2PacketHandler, window_s: float) -> dict[int, tuple[int, int]]:
    """{id: (model number, status error byte)} of the servos answering one broadcast ping within `window_s`.

    dynamixel-sdk's own broadcastPing waits for all 253 IDs (0.8 s to 4 s per rate); here the
    instruction goes out through the SDK and its answers are read back for the IDs scanned only."""
    tx = [0] * 10
    tx[4], tx[5], tx[6], tx[7] = BROADCAST_ID, 3, 0, INST_PING  # ID, length (instruction + CRC), instruction
    if ph.txPacket(port, tx) != COMM_SUCCESS:
        port.is_using = False
        return {}
    port.setPacketTimeoutMillis(window_s * 1e3)
    answers = {}
    while port.getTimeSinceStart() < window_s * 1e3:
        rx, result = ph.rxPacket(port, False)
        if result == COMM_SUCCESS and rx[5] | rx[6] << 8 == PING_STATUS_BYTES - 7:
            answers[rx[4]] = (rx[9] | rx[10] << 8, rx[8])
    return answers


def _hardware_error(port: Port, ph: Protocol2PacketHandler, servo_id: int) -> int | None:
    for _ in range(2):
        value, result, _ = ph.read1ByteTxRx(port, servo_id, dt.HARDWARE_ERROR_STATUS.address)
        if result == COMM_SUCCESS:
            return value
    return None


def format_ids(ids: list[int]) -> str:
    """[1, 2, 3, 5] -> "IDs 1-3, 5"; [4] -> "ID 4"."""
    runs: list[list[int]] = []
    for i in sorted(ids):
        if runs and i == runs[-1][-1] + 1:
            runs[-1].append(i)
        else:
            runs.append([i])
    text = ", ".join(f"{r[0]}-{r[-1]}" if len(r) > 2 else ", ".join(map(str, r)) for r in runs)
    return f"ID {text}" if len(ids) == 1 else f"IDs {text}"


def describe_hardware_error(code: int | None) -> str:
    if code is None:
        return "a hardware error (alert bit set; reading Hardware Error Status failed)"
    return f"{' and '.join(dt.hardware_error_names(code))} (hardware error 0x{code:02X})"


def format_scan(result: ScanResult) -> str:
    """The scan as sentences joined by "; ", most telling first."""
    live = result.live_bauds()
    sentences = []
    if result.expected_baud is not None and result.expected_baud not in live:
        sentences.append(f"no servo answered at {result.expected_baud} baud")
    if not live:
        tried = ", ".join(map(str, result.bauds))
        sentences.append(
            f"no servo answered at any of {tried} baud ({format_ids(list(result.ids))}): "
            "check power, wiring, the adapter and the port name"
        )
    for baud in live:
        ids = result.ids_at(baud)
        sentences.append(f"{format_ids(ids)} {'answers' if len(ids) == 1 else 'answer'} at {baud} baud")
    heard = {s.id for s in result.found}
    sentences += [f"ID {i} missing" for i in result.expected_ids if i not in heard]
    if result.expected_ids:
        extra = sorted(heard - set(result.expected_ids))
        if extra:
            sentences.append(f"{format_ids(extra)} {'answers' if len(extra) == 1 else 'answer'} but not configured")
    sentences += [
        f"ID {s.id} reports {describe_hardware_error(s.hardware_error)}" for s in result.found if s.hardware_error != 0
    ]
    return "; ".join(sentences)
