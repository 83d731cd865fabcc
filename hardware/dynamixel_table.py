"""The control table of ROBOTIS X-series servos (XM430-W350) and the units of its registers.

One place for addresses, sizes, codes and unit conversions, so that the bus driver, the link
diagnosis and the emulator cannot disagree about what a register means. Values follow ROBOTIS'
e-manual for the XM430-W350 (Protocol 2.0 firmware).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

MODEL_NUMBER_XM430_W350 = 1020
TABLE_SIZE = 147  # addresses 0..146 (present temperature is the last plain register)
EEPROM_END = 64  # addresses below this are EEPROM: writable only while torque is off


@dataclass(frozen=True)
class Field:
    name: str  # as the e-manual calls it
    address: int
    size: int  # bytes, little-endian
    writable: bool = True
    signed: bool = False


# EEPROM area
MODEL_NUMBER = Field("Model Number", 0, 2, writable=False)
FIRMWARE_VERSION = Field("Firmware Version", 6, 1, writable=False)
ID = Field("ID", 7, 1)
BAUD_RATE = Field("Baud Rate", 8, 1)
RETURN_DELAY_TIME = Field("Return Delay Time", 9, 1)  # unit 2 us
OPERATING_MODE = Field("Operating Mode", 11, 1)
MAX_POSITION_LIMIT = Field("Max Position Limit", 48, 4)
MIN_POSITION_LIMIT = Field("Min Position Limit", 52, 4)
SHUTDOWN = Field("Shutdown", 63, 1)  # hardware error bits that turn the torque off
# RAM area
TORQUE_ENABLE = Field("Torque Enable", 64, 1)
STATUS_RETURN_LEVEL = Field("Status Return Level", 68, 1)  # 0: answer PING only, 1: PING and READ, 2: everything
HARDWARE_ERROR_STATUS = Field("Hardware Error Status", 70, 1, writable=False)
POSITION_D_GAIN = Field("Position D Gain", 80, 2)
POSITION_P_GAIN = Field("Position P Gain", 84, 2)
GOAL_POSITION = Field("Goal Position", 116, 4, signed=True)
PRESENT_CURRENT = Field("Present Current", 126, 2, writable=False, signed=True)
PRESENT_VELOCITY = Field("Present Velocity", 128, 4, writable=False, signed=True)
PRESENT_POSITION = Field("Present Position", 132, 4, writable=False, signed=True)
PRESENT_INPUT_VOLTAGE = Field("Present Input Voltage", 144, 2, writable=False)  # unit 0.1 V
PRESENT_TEMPERATURE = Field("Present Temperature", 146, 1, writable=False)  # deg C

# present current, velocity and position are contiguous: one sync read gets all three
PRESENT_STATE_ADDRESS = PRESENT_CURRENT.address
PRESENT_STATE_SIZE = PRESENT_POSITION.address + PRESENT_POSITION.size - PRESENT_CURRENT.address  # 10

BAUD_RATE_BY_CODE = {0: 9600, 1: 57600, 2: 115200, 3: 1_000_000, 4: 2_000_000, 5: 3_000_000, 6: 4_000_000, 7: 4_500_000}
CODE_BY_BAUD_RATE = {baud: code for code, baud in BAUD_RATE_BY_CODE.items()}

OPERATING_MODE_POSITION = 3
OPERATING_MODE_NAMES = {
    0: "current control",
    1: "velocity control",
    3: "position control",
    4: "extended position control",
    5: "current-based position control",
    16: "PWM control",
}

HARDWARE_ERROR_NAMES = {
    0x01: "input voltage",
    0x04: "overheating",
    0x08: "motor encoder",
    0x10: "electrical shock",
    0x20: "overload",
}

ERROR_ALERT_BIT = 0x80  # status packet error byte: a hardware error is latched (read HARDWARE_ERROR_STATUS)

# factory defaults an emulated servo starts from (e-manual "Initial Value" column)
DEFAULT_POSITION_P_GAIN = 800
DEFAULT_SHUTDOWN = 0x34  # overheating, electrical shock, overload

TICKS_PER_REV = 4096
CENTER_TICKS = 2048  # 0 rad
MAX_POSITION_TICKS = TICKS_PER_REV - 1  # position control mode: goals 0..4095
VELOCITY_UNIT_RPM = 0.229
CURRENT_UNIT_A = 2.69e-3
RETURN_DELAY_UNIT_S = 2e-6


def hardware_error_names(code: int) -> list[str]:
    """The named bits set in a hardware error status byte, plus any bit this table does not know."""
    names = [name for bit, name in HARDWARE_ERROR_NAMES.items() if code & bit]
    unknown = code & ~sum(HARDWARE_ERROR_NAMES)
    if unknown:
        names.append(f"unknown bits 0x{unknown:02X}")
    return names


def operating_mode_name(mode: int) -> str:
    return OPERATING_MODE_NAMES.get(mode, "unknown mode")


def ticks_to_rad(ticks: int) -> float:
    return (ticks - CENTER_TICKS) * (2.0 * math.pi / TICKS_PER_REV)


def rad_to_ticks(rad: float) -> int:
    return round(rad * (TICKS_PER_REV / (2.0 * math.pi))) + CENTER_TICKS


def velocity_units_to_radps(units: int) -> float:
    return units * VELOCITY_UNIT_RPM * (2.0 * math.pi / 60.0)


def radps_to_velocity_units(radps: float) -> int:
    return round(radps / (VELOCITY_UNIT_RPM * 2.0 * math.pi / 60.0))


def current_units_to_A(units: int) -> float:
    return units * CURRENT_UNIT_A


def A_to_current_units(current_A: float) -> int:
    return round(current_A / CURRENT_UNIT_A)


def decode(field: Field, data: Sequence[int], offset: int = 0) -> int:
    """The register value stored little-endian at `offset` of `data`."""
    return int.from_bytes(bytes(data[offset : offset + field.size]), "little", signed=field.signed)


def encode(field: Field, value: int) -> bytes:
    """`value` as the register's little-endian bytes (OverflowError if it does not fit)."""
    return int(value).to_bytes(field.size, "little", signed=field.signed)
