"""BoardLink: the host side of the motor-board protocol (PROTOCOL.md) over a serial port.

`open()` refuses a link that is not fit to run and says why: a port that does not exist or is held by
another process, a board that rejects the CONFIG (its ERROR quoted), a board that does not answer (what to
check: baud rate, power, port), a board that speaks another protocol version. At run time nothing raises
for the link's sake: `poll()` reads what arrived and returns the newest STATE; a port that disappears (a
USB cable pulled, an emulator that exits) marks the link down, and `poll()` reopens the same path every
REOPEN_PERIOD_S and sends CONFIG again, so a symlink that is re-pointed at a new device is followed. A board
that reports IDLE after it was running has been reset: the link configures it again. `counters` tells the
link's health: frames, CRC and framing errors, lost messages, silences, reconnects, and the round trip from
a COMMAND to the first STATE applying it.

One thread uses a link (the control loop); `poll()` must run at least every HEARTBEAT_PERIOD_S, which the
control rate guarantees, so that the link's own HEARTBEATs, CONFIG retries and ESTOP repeats go out.
"""

from __future__ import annotations

import dataclasses
import errno
import select
import time
from collections import OrderedDict, deque
from dataclasses import dataclass

import serial

from hardware.frames import FrameDecoder, encode_frame
from hardware.messages import (
    SEQ_MODULUS,
    TIME_MODULUS,
    Command,
    Config,
    ConfigStatus,
    DecodeError,
    DeviceStatus,
    ErrorCode,
    ErrorReport,
    Estop,
    Heartbeat,
    Message,
    SequenceTracker,
    State,
    VersionError,
    decode_message,
)

BOARD_GONE_S = 0.3  # PROTOCOL.md: no STATE or HEARTBEAT this long and the board is gone
HEARTBEAT_PERIOD_S = 0.1  # PROTOCOL.md: a HEARTBEAT at least this often when nothing else is sent
CONFIG_RETRY_S = 0.25  # CONFIG is sent again this often until the board echoes it
REOPEN_PERIOD_S = 0.2  # a port that failed is reopened this often
ESTOP_RETRY_S = 0.02  # ESTOP is sent again (three at a time) this often until a status shows ESTOPPED
REJECTION_GRACE_S = 0.5  # after a REJECTED echo, how long open() waits for the ERROR that says why
WRITE_TIMEOUT_S = 0.1  # a write that blocks longer (the device stopped reading) counts as a port failure
READ_CHUNK = 65536
MAX_PENDING_COMMANDS = 256  # COMMANDs kept for the round trip, awaiting a STATE that applies them
PROTOCOL_ERRORS = (ErrorCode.UNSUPPORTED_VERSION, ErrorCode.UNKNOWN_TYPE, ErrorCode.BAD_LENGTH)


class LinkError(RuntimeError):
    """The board cannot be reached or refuses to run as configured; the message says what to check."""


@dataclass(frozen=True)
class LinkCounters:
    bytes_in: int = 0
    frames_in: int = 0  # frames that passed COBS and CRC
    frames_out: int = 0
    crc_errors: int = 0
    framing_errors: int = 0  # bad COBS, too short for a CRC, or no 0x00 within the longest frame
    bad_messages: int = 0  # good frames that are no message of this protocol version
    lost: int = 0  # board messages missed, from its sequence numbers
    out_of_order: int = 0  # board seq at or behind the last one: ignored
    timeouts: int = 0  # silences of BOARD_GONE_S without STATE or HEARTBEAT
    reconnects: int = 0  # port reopened after a failure and CONFIG accepted again
    board_resets: int = 0  # the board reported IDLE after running, and was configured again
    board_errors: int = 0  # ERROR messages from the board (the last one: BoardLink.last_board_error)
    rtt_samples: int = 0  # round trips in the window below
    rtt_p50_ms: float = float("nan")  # COMMAND written -> first STATE whose command_seq is that COMMAND's, read
    rtt_p99_ms: float = float("nan")


class BoardLink:
    def __init__(
        self,
        port: str,
        baud: int,
        actuator_count: int,
        command_timeout_ms: int,
        control_rate_hz: int,
        *,
        answer_timeout_s: float = 1.0,
        board_gone_s: float = BOARD_GONE_S,
        rtt_window: int = 1000,
    ):
        self.port = port
        self.baud = baud
        self.config = Config(
            actuator_count=actuator_count, command_timeout_ms=command_timeout_ms, control_rate_hz=control_rate_hz
        )
        self.config.encode()  # raises ValueError naming a field out of range, before any port is touched
        self.answer_timeout_s = answer_timeout_s
        self.board_gone_s = board_gone_s
        self.last_board_error: ErrorReport | None = None
        self.last_port_error = ""  # why the port failed or could not be reopened
        self._serial: serial.Serial | None = None
        self._opened = False  # between open() and close(): a failed port is reopened
        self._configured = False  # the board echoed our CONFIG as accepted on this port session
        self._reconnecting = False
        self._board_ran = False  # the board reported a status other than IDLE since our last CONFIG
        self._rejected: Config | None = None  # the board's REJECTED echo on this port session
        self._rejection_error: ErrorReport | None = None  # the ERROR that followed it
        self._version_error: VersionError | None = None
        self._decoder = FrameDecoder()
        self._board_seq = SequenceTracker()
        self._seq = 0
        self._t0_s = time.monotonic()
        self._last_tx_s = self._last_config_s = self._last_estop_s = self._next_reopen_s = 0.0
        self._last_heard_s = 0.0
        self._silence_counted = False
        self._estop_pending = False
        self._newest_state_seq = 0
        self._pending: OrderedDict[int, float] = OrderedDict()  # COMMAND seq -> time written
        self._rtt_s: deque[float] = deque(maxlen=rtt_window)
        self._bytes_in = 0
        self._counts = dict(frames_out=0, bad_messages=0, timeouts=0, reconnects=0, board_resets=0, board_errors=0)

    # --- set-up --------------------------------------------------------------------------------
    def open(self) -> None:
        """Open the port, configure the board and wait for its echo; LinkError says what is wrong."""
        if self._opened:
            raise LinkError(f"board link on {self.port} is already open")
        self._serial = self._open_port()
        self._opened = True
        self.last_board_error = None
        try:
            self._wait_configured()
        except LinkError:
            self.close()
            raise

    def _wait_configured(self) -> None:
        self._start_session()
        start_s = time.monotonic()
        settled = None  # (bytes, frames) read once anything stale from before open() is through
        rejected_at_s = None
        while not self._configured:
            if self._serial is None:
                raise LinkError(f"{self.port} failed while configuring the board: {self.last_port_error}")
            self._read(wait_s=0.01)
            now = time.monotonic()
            if self._version_error is not None:
                raise LinkError(f"board on {self.port} speaks another protocol version: {self._version_error}")
            err = self.last_board_error
            if err is not None and err.code in PROTOCOL_ERRORS:
                raise LinkError(f"board on {self.port} cannot read our messages: {describe_error(err)}")
            if self._rejected is not None:
                rejected_at_s = rejected_at_s or now
                why_err = self._rejection_error
                if why_err is not None or now - rejected_at_s > REJECTION_GRACE_S:
                    why = describe_error(why_err) if why_err is not None else "it sent no ERROR saying why"
                    raise LinkError(f"board on {self.port} rejected {_describe_config(self.config)}: {why}")
            elif now - start_s > self.answer_timeout_s:
                raise LinkError(self._no_answer(settled))
            elif now - self._last_config_s >= CONFIG_RETRY_S:
                self._send_config()
            if settled is None and now - start_s >= CONFIG_RETRY_S:
                settled = (self._bytes_in, self._decoder.stats.frames_ok)

    def _no_answer(self, settled: tuple[int, int] | None) -> str:
        """What arrived after the first CONFIG_RETRY_S says what is wrong; what came before may be stale (sent
        while pyserial set the port up) and is not judged."""
        bytes_then, frames_then = settled or (self._bytes_in, self._decoder.stats.frames_ok)
        late_bytes, late_frames = self._bytes_in - bytes_then, self._decoder.stats.frames_ok - frames_then
        if late_frames:
            heard = f"{late_frames} frames arrived, none a CONFIG echo: does the board hear us (host-to-board wire)?"
        elif late_bytes:
            heard = (
                f"{late_bytes} bytes kept arriving but made no valid frame: most likely the baud rate differs "
                f"from the board's"
            )
        else:
            heard = "nothing arrived"
        return (
            f"no answer to {_describe_config(self.config)} on {self.port} within {self.answer_timeout_s:g} s "
            f"({heard}). Check that {self.baud} baud is the board's rate, that the board is powered and runs "
            f"its firmware, and that {self.port} is the board's port"
        )

    def _open_port(self) -> serial.Serial:
        try:
            return serial.Serial(self.port, self.baud, timeout=0, write_timeout=WRITE_TIMEOUT_S, exclusive=True)
        except (serial.SerialException, OSError) as e:
            raise LinkError(f"cannot open {self.port}: {_port_cause(e)} ({e})") from e

    def _start_session(self) -> None:
        """A fresh port session: our seq from 0, a 0x00 to end any partial frame, then CONFIG."""
        self._seq = 0
        self._board_seq.last_seq = None
        self._decoder.feed(b"\x00")  # a partial frame left from the last session is rejected, not glued on
        self._configured = self._board_ran = self._silence_counted = False
        self._rejected = self._rejection_error = self._version_error = None
        self._last_heard_s = time.monotonic()
        self._write(b"\x00")
        self._send_config()

    def close(self) -> None:
        self._opened = False
        self._close_port()

    def _close_port(self) -> None:
        if self._serial is not None:
            self._serial.close()
        self._serial = None
        self._configured = False

    def __enter__(self) -> BoardLink:
        self.open()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- state ---------------------------------------------------------------------------------
    @property
    def is_up(self) -> bool:
        """Port open, CONFIG accepted, and the board heard from within board_gone_s."""
        return self._configured and time.monotonic() - self._last_heard_s < self.board_gone_s

    @property
    def counters(self) -> LinkCounters:
        """A snapshot."""
        s = self._decoder.stats
        rtt_ms = sorted(1e3 * r for r in self._rtt_s)
        return LinkCounters(
            bytes_in=self._bytes_in,
            frames_in=s.frames_ok,
            crc_errors=s.crc_errors,
            framing_errors=s.framing_errors + s.oversize_frames,
            lost=self._board_seq.lost,
            out_of_order=self._board_seq.out_of_order,
            rtt_samples=len(rtt_ms),
            rtt_p50_ms=_quantile(rtt_ms, 0.5),
            rtt_p99_ms=_quantile(rtt_ms, 0.99),
            **self._counts,
        )

    # --- sending -------------------------------------------------------------------------------
    def send_command(self, command: Command) -> bool:
        """Send `command` with our seq, clock and newest STATE seq; False if not sent (link down or configuring)."""
        n = len(command.targets)
        if n != self.config.actuator_count:
            raise ValueError(f"COMMAND for {n} actuators; the link is configured for {self.config.actuator_count}")
        if not self._configured:
            return False
        seq = self._seq
        if not self._send(dataclasses.replace(command, state_seq=self._newest_state_seq)):
            return False
        self._pending[seq] = self._last_tx_s
        if len(self._pending) > MAX_PENDING_COMMANDS:
            self._pending.popitem(last=False)
        return True

    def estop(self) -> None:
        """Cut the board's motor power: ESTOP three times now, and again from poll() until a status shows
        ESTOPPED (across a reconnect, if the port is down now)."""
        self._estop_pending = True
        self._send_estops()

    def heartbeat(self, running: bool = False) -> bool:
        """Tell the board the host lives (`running`: its control loop runs). Never refreshes the command timeout."""
        return self._send(Heartbeat(status=DeviceStatus.ACTIVE if running else DeviceStatus.IDLE))

    def _send_estops(self) -> None:
        self._last_estop_s = time.monotonic()
        for _ in range(3):
            self._send(Estop())

    def _send_config(self) -> None:
        self._last_config_s = time.monotonic()
        self._configured = self._board_ran = False
        self._send(self.config)

    def _send(self, msg: Message) -> bool:
        time_us = int((time.monotonic() - self._t0_s) * 1e6) % TIME_MODULUS
        frame = encode_frame(dataclasses.replace(msg, seq=self._seq, time_us=time_us).encode())
        if not self._write(frame):
            return False
        self._seq = (self._seq + 1) % SEQ_MODULUS
        self._counts["frames_out"] += 1
        return True

    def _write(self, data: bytes) -> bool:
        if self._serial is None:
            return False
        try:
            self._serial.write(data)
        except (serial.SerialException, OSError) as e:
            self._port_failed(e)
            return False
        self._last_tx_s = time.monotonic()
        return True

    # --- receiving -----------------------------------------------------------------------------
    def poll(self) -> State | None:
        """Read what arrived; the newest STATE among it, or None. Never raises for a failed port: it reopens it."""
        if not self._opened:
            raise LinkError(f"board link on {self.port} is not open")
        now = time.monotonic()
        if self._serial is None:
            if now >= self._next_reopen_s:
                self._reopen()
            return None
        newest = self._read(wait_s=0.0)
        if self._serial is not None:
            self._keep_up(now)
        return newest

    def _keep_up(self, now: float) -> None:
        """Count a silence; send what is due: CONFIG retries, ESTOP repeats, HEARTBEATs."""
        if now - self._last_heard_s > self.board_gone_s and not self._silence_counted:
            self._silence_counted = True
            self._counts["timeouts"] += 1
        if not self._configured and now - self._last_config_s >= CONFIG_RETRY_S:
            self._send_config()
        if self._estop_pending and now - self._last_estop_s >= ESTOP_RETRY_S:
            self._send_estops()
        if now - self._last_tx_s >= HEARTBEAT_PERIOD_S:
            self.heartbeat()

    def _reopen(self) -> None:
        try:
            self._serial = self._open_port()
        except LinkError as e:
            self.last_port_error = str(e)
            self._next_reopen_s = time.monotonic() + REOPEN_PERIOD_S
            return
        self._reconnecting = True
        self._start_session()

    def _port_failed(self, e: Exception) -> None:
        self.last_port_error = f"{self.port} failed: {e}"
        self._close_port()
        self._next_reopen_s = time.monotonic() + REOPEN_PERIOD_S

    def _read(self, wait_s: float) -> State | None:
        port = self._serial
        assert port is not None
        try:
            if wait_s > 0:
                select.select([port.fileno()], [], [], wait_s)
            data = port.read(READ_CHUNK)
        except (serial.SerialException, OSError) as e:
            self._port_failed(e)
            return None
        self._bytes_in += len(data)
        now = time.monotonic()
        newest = None
        for payload in self._decoder.feed(data):
            try:
                msg = decode_message(payload)
            except DecodeError as e:
                self._counts["bad_messages"] += 1
                if isinstance(e, VersionError):
                    self._version_error = e
                continue
            state = self._on_message(msg, now)
            newest = state or newest
        return newest

    def _on_message(self, msg: Message, now: float) -> State | None:
        status = msg.status if isinstance(msg, (State, Heartbeat)) else None
        if status is not None:
            self._last_heard_s, self._silence_counted = now, False
            if status == DeviceStatus.IDLE and self._board_ran:  # PROTOCOL.md: the board was reset
                self._board_reset()
        if not self._board_seq.update(msg.seq):
            # a serial link does not reorder: a seq behind the last one means the board restarted its counter
            self._board_reset()
            self._board_seq.last_seq = msg.seq
        if isinstance(msg, Config):
            self._on_config_echo(msg)
        elif isinstance(msg, ErrorReport):
            self._counts["board_errors"] += 1
            self.last_board_error = msg
            if self._rejected is not None:
                self._rejection_error = msg
        elif status is not None:
            self._estop_pending &= status != DeviceStatus.ESTOPPED
            if self._configured:
                self._board_ran |= status != DeviceStatus.IDLE
                if isinstance(msg, State):
                    return self._on_state(msg, now)
        return None

    def _board_reset(self) -> None:
        """The board lost its configuration and restarted its seq: configure it again."""
        self._counts["board_resets"] += 1
        self._board_seq.last_seq = None
        self._send_config()

    def _on_config_echo(self, echo: Config) -> None:
        if self._configured or dataclasses.replace(echo, seq=0, time_us=0, status=ConfigStatus.REQUEST) != self.config:
            return
        if echo.status == ConfigStatus.REJECTED:
            self._rejected = echo
        elif echo.status == ConfigStatus.ACCEPTED:
            self._configured = True
            if self._reconnecting:
                self._reconnecting = False
                self._counts["reconnects"] += 1

    def _on_state(self, state: State, now: float) -> State | None:
        if len(state.position_rad) != self.config.actuator_count:
            self._counts["bad_messages"] += 1
            return None
        self._newest_state_seq = state.seq
        sent_s = self._pending.pop(state.command_seq, None)
        if sent_s is not None:
            self._rtt_s.append(now - sent_s)
        return state


def _port_cause(e: Exception) -> str:
    code = getattr(e, "errno", None)
    if code == errno.ENOENT:
        return "no such port: is the board plugged in and powered, and is this its path?"
    if code in (errno.EAGAIN, errno.EWOULDBLOCK):
        return "held by another process (a serial monitor, another s2r, ModemManager): close it first"
    if code == errno.EACCES:
        return "permission denied: add the user to the port's group (dialout, uucp)"
    if code == errno.EBUSY:
        return "busy: another program has it open"
    return "the port cannot be opened"


def describe_error(err: ErrorReport) -> str:
    """An ERROR as the logs name it: code, its name, the board's text."""
    name = err.code.name if isinstance(err.code, ErrorCode) else "unknown to this host"
    return f"ERROR {int(err.code)} ({name}): {err.text!r}"


def _describe_config(c: Config) -> str:
    return f"CONFIG ({c.actuator_count} actuators, command timeout {c.command_timeout_ms} ms, {c.control_rate_hz} Hz)"


def _quantile(sorted_values: list[float], q: float) -> float:
    """Nearest-rank quantile; NaN without values."""
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]
