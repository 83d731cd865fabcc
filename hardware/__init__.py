"""Serial links to real robots, and emulators that stand in for their electronics on a pseudo-terminal.

Dynamixel Protocol 2.0, through ROBOTIS' dynamixel-sdk: `dynamixel_table` (X-series registers and
units), `dynamixel_bus` (joints <-> servos: set-up checks, one sync read of the state, one sync write
of goals), `dynamixel_scan` (link diagnosis that names a wrong baud rate, a missing ID, a hardware
error), `dynamixel_emulator` (servos on a pty, paced at the baud rate, with the firmware's command
timeout and injectable faults).

The motor-board protocol for microcontroller boards and flight controllers (PROTOCOL.md is its spec for
firmware authors): `frames` (COBS + CRC-32 frames, a resynchronising stream decoder with counters),
`messages` (a versioned message set: state, command, heartbeat, e-stop, config, error, with sequence
numbers), `bench_frames` (encode + decode throughput).

Per robot: `serial_config` (the `serial:` section of its hardware YAML: which bus, baud rate, servo IDs),
`sim_plant` (the robot in MuJoCo as the plant behind an emulator), `hil` (`s2r hil`: the robot behind its
electronics on a pty, in real time).
Nothing here is imported by training or deploy code.
"""
