"""The Dynamixel stack through a real pseudo-terminal: the unmodified dynamixel-sdk and our bus driver
against the emulated servos, including wrong settings and injected faults.

The machine running these may be loaded: every wait is generous (an answer is awaited 2 x USB_LATENCY_S
+ 2 ms beyond its wire time, where the SDK allows 34 ms) and nothing asserts on time.
"""

import time

import crc
import pytest
import serial
from dynamixel_sdk import (
    COMM_RX_TIMEOUT,
    COMM_SUCCESS,
    GroupSyncRead,
    GroupSyncWrite,
    PacketHandler,
    PortHandler,
    port_handler,
)

from hardware import dynamixel_table as dt
from hardware.dynamixel_bus import BusError, DynamixelBus, LinkError, ServoCfg, ServoError
from hardware.dynamixel_emulator import DynamixelEmulator, EmulatorCfg, crc16, frame, stuff, unstuff
from hardware.dynamixel_scan import format_ids, format_scan, scan_link

USB_LATENCY_S = 0.05  # answers are awaited 2 x this + 2 ms beyond their wire time
BAUD = 1_000_000
SERVOS = {"hip": ServoCfg(1), "knee": ServoCfg(2, offset_rad=0.2, direction=-1), "ankle": ServoCfg(3)}


def emulator(**kw) -> DynamixelEmulator:
    kw.setdefault("command_timeout_s", None)
    return DynamixelEmulator(EmulatorCfg(ids=(1, 2, 3), baud=BAUD, **kw))


def bus(port: str, baud: int = BAUD, servos: dict = SERVOS) -> DynamixelBus:
    return DynamixelBus(port, baud, servos, usb_latency_s=USB_LATENCY_S)


def wait_until(condition, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


@pytest.fixture
def sdk_port(monkeypatch):
    """The SDK's own PortHandler; only its assumed USB latency is raised, for a loaded machine."""
    monkeypatch.setattr(port_handler, "LATENCY_TIMER", USB_LATENCY_S * 1e3)

    def open_port(name: str, baud: int = BAUD) -> PortHandler:
        port = PortHandler(name)
        assert port.setBaudRate(baud)
        return port

    return open_port


def test_table_units_round_trip():
    assert dt.rad_to_ticks(0.0) == 2048 and dt.ticks_to_rad(2048 + 1024) == pytest.approx(3.14159265 / 2)
    assert dt.velocity_units_to_radps(dt.radps_to_velocity_units(1.0)) == pytest.approx(1.0, abs=0.02)
    assert dt.current_units_to_A(dt.A_to_current_units(1.0)) == pytest.approx(1.0, abs=0.002)
    assert dt.decode(dt.PRESENT_POSITION, dt.encode(dt.PRESENT_POSITION, -5)) == -5
    assert dt.PRESENT_STATE_ADDRESS == 126 and dt.PRESENT_STATE_SIZE == 10
    assert dt.hardware_error_names(0x24) == ["overheating", "overload"]
    assert format_ids([1, 2, 3, 5]) == "IDs 1-3, 5" and format_ids([4]) == "ID 4"


def test_packets_match_protocol_and_sdk():
    # the e-manual's ping of ID 1: FF FF FD 00 01 03 00 01 19 4E
    assert frame(1, b"\x01") == bytes.fromhex("fffffd0001030001194e")
    independent = crc.Calculator(crc.Configuration(16, 0x8005, 0, 0, False, False))
    sdk = PacketHandler(2.0)
    data = bytes(range(256)) * 2
    assert crc16(data) == independent.checksum(data) == sdk.updateCRC(0, list(data), len(data))
    body = bytes.fromhex("03 7000 fffffd00 fffffdfd ff")
    assert stuff(body) == bytes.fromhex("03 7000 fffffdfd00 fffffdfdfd ff")
    assert unstuff(stuff(body)) == body
    # the SDK's stuffing agrees (its txPacket drops addStuffing's result, so it sends instructions unstuffed:
    # consistent length and CRC, which the emulator takes as a length-driven parser does)
    tx = sdk.addStuffing([0, 0, 0, 0, 7, len(body) + 2, 0] + list(body) + [0, 0])
    wire = stuff(body)
    head = b"\xff\xff\xfd\x00" + bytes([7, len(wire) + 2, 0])
    assert bytes(tx[4 : 7 + len(wire)]) == head[4:] + wire
    assert frame(7, body) == head + wire + sdk.updateCRC(0, list(head + wire), len(head + wire)).to_bytes(2, "little")


def test_unmodified_sdk_pings_reads_writes_and_syncs(sdk_port):
    with emulator() as emu:
        port, ph = sdk_port(emu.port), PacketHandler(2.0)
        assert ph.ping(port, 2) == (dt.MODEL_NUMBER_XM430_W350, COMM_SUCCESS, 0)
        assert ph.ping(port, 9)[1] == COMM_RX_TIMEOUT
        assert ph.broadcastPing(port)[0] == {i: [1020, 46] for i in (1, 2, 3)}
        assert ph.read1ByteTxRx(port, 1, dt.OPERATING_MODE.address) == (3, COMM_SUCCESS, 0)
        assert ph.write2ByteTxRx(port, 1, dt.POSITION_P_GAIN.address, 640) == (COMM_SUCCESS, 0)
        assert ph.read2ByteTxRx(port, 1, dt.POSITION_P_GAIN.address) == (640, COMM_SUCCESS, 0)
        # FF FF FD in the parameters (112: profile velocity, plain memory here); the answer comes stuffed
        assert ph.write4ByteTxRx(port, 2, 112, 0x00FDFFFF) == (COMM_SUCCESS, 0)
        assert ph.read4ByteTxRx(port, 2, 112) == (0x00FDFFFF, COMM_SUCCESS, 0)
        assert ph.write1ByteTxRx(port, 3, dt.TORQUE_ENABLE.address, 1) == (COMM_SUCCESS, 0)
        assert ph.write1ByteTxRx(port, 3, dt.OPERATING_MODE.address, 1) == (COMM_SUCCESS, 7)  # EEPROM, torque on

        enable = GroupSyncWrite(port, ph, dt.TORQUE_ENABLE.address, 1)
        goal = GroupSyncWrite(port, ph, dt.GOAL_POSITION.address, 4)
        for i in (1, 2, 3):
            enable.addParam(i, [1])
            goal.addParam(i, list((2048 + 200 * i).to_bytes(4, "little")))
        assert enable.txPacket() == COMM_SUCCESS and goal.txPacket() == COMM_SUCCESS
        state = GroupSyncRead(port, ph, dt.PRESENT_STATE_ADDRESS, dt.PRESENT_STATE_SIZE)
        for i in (1, 2, 3):
            state.addParam(i)

        def arrived() -> bool:
            if state.txRxPacket() != COMM_SUCCESS:
                return False
            return all(abs(state.getData(i, dt.PRESENT_POSITION.address, 4) - (2048 + 200 * i)) <= 2 for i in (1, 2, 3))

        assert wait_until(arrived)
        assert ph.reboot(port, 3) == (COMM_SUCCESS, 0)
        assert ph.read1ByteTxRx(port, 3, dt.TORQUE_ENABLE.address) == (0, COMM_SUCCESS, 0)
        port.closePort()
        c = emu.counters()
        assert c.crc_errors == 0 and c.answered > 0


def test_emulator_hears_only_its_baud_rate(sdk_port):
    with emulator() as emu:
        ph = PacketHandler(2.0)
        for baud in (57600, 1_000_000, 4_000_000):
            port = sdk_port(emu.port, baud)
            assert emu.client_baud() == baud  # termios of the slave, read on the master
            _, result, _ = ph.ping(port, 1)
            assert (result == COMM_SUCCESS) == (baud == BAUD)
            port.closePort()
        assert emu.counters().baud_mismatches >= 2
        with serial.Serial(emu.port, 4_500_000):  # not a termios constant: read through termios2
            assert emu.client_baud() == 4_500_000


def test_bus_opens_reads_state_and_moves_servos():
    servos = {**SERVOS, "ankle": ServoCfg(3, position_p_gain=640, position_d_gain=12)}
    with emulator() as emu, bus(emu.port, servos=servos) as b:
        assert [emu.read_register(i, dt.TORQUE_ENABLE) for i in (1, 2, 3)] == [1, 1, 1]
        assert emu.read_register(3, dt.POSITION_P_GAIN) == 640 and emu.read_register(3, dt.POSITION_D_GAIN) == 12
        s = b.read_state()
        assert s.position_rad == pytest.approx([0.0, 0.2, 0.0], abs=2e-3)  # knee: offset 0.2 rad, reversed
        goal = [0.3, -0.4, 0.5]
        b.write_goal(goal)
        assert wait_until(lambda: max(abs(b.read_state().position_rad - goal)) < 3e-3)
        servo_knee_rad = 0.2 - (-0.4)
        assert dt.ticks_to_rad(emu.read_register(2, dt.GOAL_POSITION)) == pytest.approx(servo_knee_rad, abs=2e-3)
        assert b.stats.ok >= 2 and b.stats.timeouts == 0 and b.stats.max_rtt_s > 0
        with pytest.raises(ValueError, match="'hip'.*outside"):
            b.write_goal([4.0, 0.0, 0.0])
        b.torque_off()
        assert wait_until(lambda: all(emu.read_register(i, dt.TORQUE_ENABLE) == 0 for i in (1, 2, 3)))


def test_bus_names_a_port_that_does_not_open():
    with pytest.raises(LinkError, match="cannot open /dev/no-such-adapter"):
        bus("/dev/no-such-adapter").open()


def test_wrong_operating_mode_is_named():
    with emulator() as emu:
        emu.write_register(2, dt.OPERATING_MODE, 1)
        with pytest.raises(ServoError, match=r"ID 2 \(joint 'knee'\) is in velocity control mode \(operating mode 1\)"):
            bus(emu.port).open()
        assert emu.read_register(1, dt.TORQUE_ENABLE) == 0  # nothing was switched on


def test_wrong_baud_rate_is_diagnosed():
    with emulator() as emu:
        with pytest.raises(LinkError) as e:
            bus(emu.port, baud=57600).open()
    assert "no servo answered at 57600 baud" in str(e.value)
    assert "IDs 1-3 answer at 1000000 baud" in str(e.value)


def test_missing_id_is_named():
    with emulator() as emu:
        emu.set_silent(3)
        with pytest.raises(LinkError, match=r"no answer from ID 3 \(joint 'ankle'\).*ID 3 missing"):
            bus(emu.port).open()


def test_overload_is_reported_by_name(sdk_port):
    with emulator() as emu:
        with bus(emu.port) as b:
            emu.set_hardware_error(2, 0x20)
            assert b.read_hardware_errors() == {"hip": (0, []), "knee": (0x20, ["overload"]), "ankle": (0, [])}
            assert b.read_state().alert_joints == ("knee",)
            assert emu.read_register(2, dt.TORQUE_ENABLE) == 0  # the firmware's shutdown
        with pytest.raises(ServoError, match=r"ID 2 \(joint 'knee'\) reports overload \(hardware error 0x20\)"):
            bus(emu.port).open()
        assert "ID 2 reports overload (hardware error 0x20)" in format_scan(
            scan_link(emu.port, bauds=(BAUD,), expected_ids=(1, 2, 3), usb_latency_s=USB_LATENCY_S)
        )
        port, ph = sdk_port(emu.port), PacketHandler(2.0)
        assert ph.reboot(port, 2) == (COMM_SUCCESS, 0x80)  # answered before the reboot, alert still set
        port.closePort()
        with bus(emu.port) as b:
            assert b.read_hardware_errors()["knee"] == (0, [])


@pytest.mark.parametrize("fault", ["flip_fraction", "drop_fraction"])
def test_corrupted_and_lost_bytes_are_counted_not_fatal(fault):
    with emulator() as emu, bus(emu.port) as b:
        emu.set_output_faults(**{fault: 0.01})
        failures = 0
        for _ in range(15):
            try:
                b.read_state()
            except BusError:
                failures += 1
        c = emu.counters()
        assert c.flipped_bytes + c.dropped_bytes > 0
        assert failures > 0 and b.stats.corrupt + b.stats.timeouts == failures
        emu.set_output_faults()

        def reads() -> bool:
            try:
                b.read_state()
                return True
            except BusError:
                return False

        assert wait_until(reads)


def test_command_timeout_turns_torque_off():
    with emulator(command_timeout_s=0.5) as emu, bus(emu.port) as b:
        b.write_goal([0.1, 0.1, 0.1])
        assert wait_until(lambda: all(emu.read_register(i, dt.TORQUE_ENABLE) == 0 for i in (1, 2, 3)))
        assert emu.counters().command_timeouts == 3  # each servo had its torque on, and lost it to the watchdog
        b.read_state()  # the bus still answers
