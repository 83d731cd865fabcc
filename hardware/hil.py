"""`s2r hil`: hardware-in-the-loop. A MuJoCo robot in real time behind its electronics on a pseudo-terminal.

The robot's hardware YAML (ros_ws/src/s2r_ros/config/<robot>.yaml) says which electronics (its `serial:`
section, hardware/serial_config.py): an arm with `drive: position_servo` on a `bus: dynamixel` is served
by the Dynamixel bus emulator (servo IDs, offsets, directions from the section), every other robot by
the motor-board emulator (PROTOCOL.md). The plant behind either is the robot in MuJoCo
(hardware/sim_plant.py), so a host (the serial bridge, DynamixelBus, BoardLink, a firmware author's own
tool) sees a robot that moves as the simulated one does, at the baud rate's pace, with the
electronics' own command timeout.

Electronics run on their own microcontrollers, which a busy host does not slow down; the command runs
every thread of its process (emulator, plant, physics, MuJoCo's pool) with real-time scheduling where the
system permits it (deploy/realtime.py), above the host's real-time nodes, and says whether it got it.
Without it, on a 2-core machine under a training run, the arm's plant fell 174 ms behind real time
and the bridge's sync reads timed out (tests/test_serial_bridge.py).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from config.validate import ConfigError
from deploy.realtime import freeze_gc, set_process_realtime
from hardware import dynamixel_table as dt
from hardware.serial_config import DynamixelSerialCfg, HardwareSerial, load_hardware_serial

if TYPE_CHECKING:
    from config.robot import RobotCfg
    from hardware.board_emulator import BoardEmulator
    from hardware.dynamixel_emulator import DynamixelEmulator
    from hardware.sim_plant import PhysicsStepper

CONFIG_DIR = Path(__file__).resolve().parents[1] / "ros_ws" / "src" / "s2r_ros" / "config"
REALTIME_PRIORITY = 60  # SCHED_FIFO: above policy_node's and serial_bridge_node's 50, as hardware is


def find_hardware_config(name_or_path: str) -> Path:
    """A hardware YAML: a path; NAME for ros_ws/src/s2r_ros/config/NAME.yaml; or the one there whose
    `robot:` is NAME (a built-in robot: go1 -> quadruped.yaml)."""
    import yaml

    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        if not path.is_file():
            raise ConfigError(f"hardware config not found: {path}")
        return path
    if (CONFIG_DIR / f"{name_or_path}.yaml").is_file():
        return CONFIG_DIR / f"{name_or_path}.yaml"
    configs = sorted(p for p in CONFIG_DIR.glob("*.yaml") if not p.stem.endswith("_nodes"))
    robots = {p: (yaml.safe_load(p.read_text()) or {}).get("robot") for p in configs}
    matches = [p for p, robot in robots.items() if robot == name_or_path]
    if len(matches) == 1:
        return matches[0]
    have = ", ".join(f"{p.stem} ({robot})" for p, robot in robots.items())
    why = (
        f"{len(matches)} name '{name_or_path}' as their robot: give one by name"
        if matches
        else f"none is '{name_or_path}' or names it as its robot"
    )
    raise ConfigError(f"hardware configs in {CONFIG_DIR}: {why} (have: {have}; or give a YAML path)")


@dataclass
class Hil:
    """A running emulator with its MuJoCo plant."""

    emulator: DynamixelEmulator | BoardEmulator
    stepper: PhysicsStepper
    port: str  # the pty's slave path
    description: str

    def stop(self) -> None:
        self.emulator.stop()  # first: its plant thread is the one stepping the physics
        self.stepper.close()


def start_hil(hw: HardwareSerial, baud: int | None = None) -> Hil:
    """The robot of `hw` behind its electronics, on a new pty; `baud` overrides the serial section's."""
    from hardware.sim_plant import PhysicsStepper, hil_sim_robot

    robot, serial = hw.robot, hw.serial
    servo_arm = robot.joints is not None and robot.joints.drive == "position_servo"
    if isinstance(serial, DynamixelSerialCfg) and not servo_arm:
        raise ConfigError(
            f"{hw.source}: serial.bus: dynamixel serves position servos, and robot '{robot.name}' "
            f"is not an arm with joints.drive: position_servo; use bus: motor_board"
        )
    if servo_arm and serial is None:
        raise ConfigError(
            f"{hw.source}: robot '{robot.name}' has position servos: its hardware config needs a "
            f"`serial:` section with bus: dynamixel and the servo of each joint (hardware/serial_config.py)"
        )
    if baud is not None and baud <= 0:
        raise ConfigError(f"--baud {baud}: must be > 0")
    if baud is not None and isinstance(serial, DynamixelSerialCfg) and baud not in dt.CODE_BY_BAUD_RATE:
        raise ConfigError(f"--baud {baud}: not a Dynamixel X-series rate {sorted(dt.CODE_BY_BAUD_RATE)}")
    stepper = PhysicsStepper(hil_sim_robot(robot))
    plant_rate_hz = 1.0 / stepper.dt_s
    try:
        if isinstance(serial, DynamixelSerialCfg):
            emulator, what = _dynamixel(stepper, serial, baud or serial.baud, plant_rate_hz)
        else:
            emulator, what = _board(stepper, robot, baud or (serial.baud if serial else None), plant_rate_hz)
        port = emulator.start()
    except BaseException:
        stepper.close()
        raise
    text = (
        f"{robot.name}: {what} on {port}; MuJoCo plant ({stepper.sim.task}) stepped every physics period, "
        f"{stepper.dt_s * 1e3:g} ms, from the first command on"
    )
    return Hil(emulator, stepper, port, text)


def _dynamixel(
    stepper: PhysicsStepper, serial: DynamixelSerialCfg, baud: int, plant_rate_hz: float
) -> tuple[DynamixelEmulator, str]:
    from hardware.dynamixel_emulator import DynamixelEmulator, EmulatorCfg
    from hardware.dynamixel_scan import format_ids
    from hardware.sim_plant import DynamixelSimPlant

    plant = DynamixelSimPlant(stepper, serial.joints)
    emulator = DynamixelEmulator(EmulatorCfg(ids=plant.ids, baud=baud, plant_rate_hz=plant_rate_hz), plant)
    joints = ", ".join(f"{name} = ID {j.id}" for name, j in serial.joints.items())
    timeout = emulator.cfg.command_timeout_s
    return emulator, (
        f"{len(plant.ids)} Dynamixel XM430-W350 servos ({format_ids(list(plant.ids))}: {joints}) at {baud} baud, "
        f"torque off after {timeout:g} s without a goal"
    )


def _board(
    stepper: PhysicsStepper, robot: RobotCfg, baud: int | None, plant_rate_hz: float
) -> tuple[BoardEmulator, str]:
    from hardware.board_emulator import BoardEmulator, BoardEmulatorCfg
    from hardware.sim_plant import BoardSimPlant

    plant = BoardSimPlant(stepper, robot)
    cfg = BoardEmulatorCfg(plant_rate_hz=plant_rate_hz, modes=plant.modes, **({"baud": baud} if baud else {}))
    modes = "/".join(m.name for m in plant.modes)
    imu = " and the IMU" if stepper.sim.has_base else ""
    return BoardEmulator(plant, cfg), (
        f"motor board driving {plant.num_actuators} actuators{imu} ({modes} commands) at {cfg.baud} baud"
    )


def run_hil(robot: str, baud: int | None = None, link: str | None = None, report_s: float = 10.0) -> None:
    """The command: start, print the pty path (first line, alone) and what serves it, keep `link` pointing
    at it, report the real-time pacing every `report_s` (0: only at the end) until Ctrl-C or SIGTERM."""
    from hardware.board_emulator import point_link

    hw = load_hardware_serial(find_hardware_config(robot))
    link_path = Path(link) if link else None
    if link_path is not None and link_path.exists() and not link_path.is_symlink():
        raise ConfigError(f"--link {link_path}: exists and is not a symlink; it is left alone")
    hil = start_hil(hw, baud)
    freeze_gc()
    why_not = set_process_realtime(REALTIME_PRIORITY)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        if link_path is not None:
            point_link(link_path, hil.port)
        print(hil.port, flush=True)
        realtime = f"not permitted ({why_not})" if why_not else f"SCHED_FIFO {REALTIME_PRIORITY}"
        print(
            hil.description + (f"; {link_path} -> {hil.port}" if link_path else "") + f"; real-time: {realtime}",
            flush=True,
        )
        next_report_s = time.monotonic() + report_s
        while not stop.wait(0.5):
            if hil.stepper.error is not None:
                raise RuntimeError("the MuJoCo plant stopped") from hil.stepper.error
            if report_s > 0 and time.monotonic() >= next_report_s and hil.stepper.started:
                next_report_s = time.monotonic() + report_s
                print(f"pacing: {hil.stepper.pacing().describe()}", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        hil.stop()
        if link_path is not None and link_path.is_symlink() and os.readlink(link_path) == hil.port:
            link_path.unlink()
        print(f"stopped; pacing: {hil.stepper.pacing().describe()}", flush=True)
