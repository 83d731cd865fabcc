"""A MuJoCo robot as the plant behind emulated electronics (hardware-in-the-loop, `s2r hil`).

The physics is the training task's (sim.sim_robot.SimRobot, one env), made one nominal physical robot:
no sensor noise, no randomization, no terminations and no episode end, so nothing teleports it while
a host drives it (only a diverged physics step still resets it, and is counted). It starts at rest:
a joint robot at its default pose, a multirotor level where the task starts it, in the air.

The emulators call their plant from their own thread, paced to real time, at a rate we choose. We
choose the physics period (the arm's 4 ms, the quadruped's 5 ms; the quadrotor's motor model runs at
its 10 ms control period): a new goal or COMMAND then acts from the next physics step and the state
the host reads is at most one physics step old, as with a real drive, where a control-period plant
would hold each goal up to 20 ms and refresh the state 50 times a second. Both keep real time on the
2-core development machine; measured there under a training job at full load, `s2r hil` at nice 19:
a physics step costs 0.75-0.85 ms (arm) and 1.0-1.1 ms (quadruped) with the thread hand-offs and
readings, about 20 % of one core (a control period stepped at once: 0.7 and 1.5 ms of its 20 ms, 4-7 %),
and under a 50 Hz host the plant kept 100.0 % of real time over 60 s, at worst 6-21 ms behind the wall
clock (`s2r hil` reports this as it runs).

Physics starts with the first command (a servo's torque on, the board's first COMMAND), as
sim_robot_node's does: until then the robot rests where it was placed, and a host that opens the port
reads the default pose. From then on it runs whatever the host does; outputs off is the drives'
passive behaviour (a servo's back-EMF damping, a motor board's zero torque or thrust).
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from dataclasses import dataclass

import mujoco
import numpy as np
import torch

from config.robot import GRAVITY_MPS2, RobotCfg
from deploy.rotations import projected_gravity, quat_to_rotmat
from hardware.messages import Command, CommandMode, Imu
from hardware.serial_config import ServoJointCfg
from sim.sim_robot import SimRobot, noise_free
from sim.tasks import default_cfg

TASK_BY_KIND = {"arm": "arm-reach", "legged": "quadruped-walk", "multirotor": "quadrotor-hover"}
HIL_EPISODE_S = 1e6  # ~12 days: the episode never ends while a host drives the robot
# XM430-W350 at 12 V (ROBOTIS e-manual): stall torque 4.1 N m at stall current 2.3 A. Present current is
# the joint torque over this ratio (the motor's no-load current and its fall with speed left out).
XM430_TORQUE_PER_CURRENT_NM_PER_A = 4.1 / 2.3


def hil_sim_robot(robot: RobotCfg) -> SimRobot:
    """The task of the robot's kind on `robot`, as one nominal robot (module docstring)."""
    task = TASK_BY_KIND[robot.kind]
    cfg = noise_free(default_cfg(task, robot.source))
    cfg = dataclasses.replace(cfg, events={}, terminations={}, episode_s=HIL_EPISODE_S)
    sim = SimRobot(task, cfg=cfg)
    b = sim.env.backend
    if sim.joint_names:  # the task's reset perturbs the joints
        b.qpos[0] = torch.as_tensor(sim.env.robot.home_qpos)
    else:  # a multirotor stays where the task starts it, in the air, but level
        q = sim.env.robot.base_qadr
        b.qpos[0, q + 3 : q + 7] = torch.tensor([1.0, 0.0, 0.0, 0.0], dtype=b.qpos.dtype)
    b.qvel[0] = 0.0
    b.sensordata[0] = 0.0  # of the state before: nothing is sensed (no drive torque) until physics starts
    return sim


class _Closed(Exception):
    pass


@dataclass(frozen=True)
class Pacing:
    """How the plant kept up with real time since physics started."""

    sim_s: float  # simulated time
    wall_s: float  # wall-clock time from the first physics step's start to the newest one's due end
    max_behind_s: float  # the most the simulation lagged the wall clock at any physics step
    physics_dt_s: float
    step_cost_s: float  # mean compute time of one physics step, readings included
    resets: int  # episodes restarted because the physics diverged

    @property
    def behind_s(self) -> float:
        return max(0.0, self.wall_s - self.sim_s)

    def describe(self) -> str:
        if not self.wall_s:
            return "physics waits for the first command"
        text = (
            f"simulated {self.sim_s:.2f} s in {self.wall_s:.2f} s "
            f"({100 * self.sim_s / self.wall_s:.1f} % of real time, "
            f"{self.behind_s * 1e3:.0f} ms behind now, {self.max_behind_s * 1e3:.0f} ms at worst); "
            "a physics step costs "
            f"{self.step_cost_s * 1e3:.2f} ms of its {self.physics_dt_s * 1e3:g} ms"
        )
        return text + (f"; {self.resets} reset(s) after the physics diverged" if self.resets else "")


class PhysicsStepper:
    """A SimRobot advanced by its caller's clock, one physics step at a time.

    SimRobot.step runs a whole control period and asks `between()` for the newest input before each
    physics step. It runs here in a thread of its own (from the first `run_for` on) whose `between()`
    waits for the next physics step that `run_for` grants, so the emulator's paced plant thread steps the
    physics at the physics rate, with the newest command, and reads the state after each step."""

    def __init__(self, sim: SimRobot):
        self.sim = sim
        self.dt_s = sim.physics_dt_s
        self.error: BaseException | None = None
        self._input: tuple = ()
        self._go = threading.Semaphore(0)
        self._done = threading.Semaphore(0)
        self._stepping = False
        self._closing = False
        self._debt_s = 0.0
        self._steps = self._resets = 0
        self._cost_s = 0.0
        self._max_behind_s = 0.0
        self._start_s: float | None = None
        self._last_step_s = 0.0  # when the newest physics step began
        self._thread = threading.Thread(target=self._run, name="hil-physics", daemon=True)

    def _run(self) -> None:
        try:
            while True:
                self._resets += self.sim.step(*self._input, between=self._between)
        except _Closed:
            pass
        except BaseException as e:  # noqa: BLE001 (handed to the plant thread and the command's main loop)
            self.error = e
        finally:
            self._done.release()  # an advance waiting on this thread returns and sees the error

    def _between(self):
        if self._stepping:
            self._done.release()  # the previous physics step, and the task's bookkeeping after it, are done
        self._go.acquire()
        if self._closing:
            raise _Closed
        self._stepping = True
        return self._input

    def run_for(self, dt_s: float, command, kp_scale, kd) -> None:
        """Advance `dt_s` (whole physics steps, the remainder carried over) with this input."""
        if self._start_s is None:
            self._start_s = time.monotonic()
            self._input = (command, kp_scale, kd)
            self._thread.start()
        self._debt_s += dt_s
        while self._debt_s > 0.5 * self.dt_s:
            self._debt_s -= self.dt_s
            start_s = time.perf_counter()
            self._last_step_s = time.monotonic()
            self._max_behind_s = max(self._max_behind_s, self._last_step_s - self._start_s - self._steps * self.dt_s)
            self._input = (command, kp_scale, kd)
            self._go.release()
            self._done.acquire()
            if self.error is not None or not self._thread.is_alive():
                raise RuntimeError(f"the physics thread stopped: {self.error!r}") from self.error
            self._cost_s += time.perf_counter() - start_s
            self._steps += 1

    @property
    def started(self) -> bool:
        return self._start_s is not None

    def readings(self) -> dict[str, np.ndarray]:
        return self.sim.readings()

    def pacing(self) -> Pacing:
        wall_s = self._last_step_s + self.dt_s - self._start_s if self._start_s is not None else 0.0
        return Pacing(
            self._steps * self.dt_s,
            wall_s,
            self._max_behind_s,
            self.dt_s,
            self._cost_s / max(self._steps, 1),
            self._resets,
        )

    def close(self) -> None:
        """Stop the physics thread (call after the plant thread has stopped) and the simulation."""
        self._closing = True
        self._go.release()
        if self._thread.is_alive():
            self._thread.join(timeout=10.0)
        self.sim.close()


class DynamixelSimPlant:
    """The robot's joints as Dynamixel servos in position control mode (hardware.dynamixel_emulator's
    Plant, keyed by servo ID). Servo angle = offset + direction x joint angle. A servo with torque on
    drives its joint with the robot config's position-servo gains toward its goal; with torque off,
    only the servo's own damping (the drive's kd, with kp 0) resists, as in the deploy safe state."""

    def __init__(self, stepper: PhysicsStepper, joints: dict[str, ServoJointCfg]):
        if tuple(joints) != stepper.sim.joint_names:
            raise ValueError(
                f"servo joints {tuple(joints)} are not the robot's, in wire order: {stepper.sim.joint_names}"
            )
        self.stepper = stepper
        self.ids = tuple(j.id for j in joints.values())
        self._offset_rad = np.array([j.offset_rad for j in joints.values()])
        self._direction = np.array([j.direction for j in joints.values()], dtype=float)
        self._started = False

    def step(self, goal_rad_by_id: dict[int, float], torque_on: dict[int, bool], dt_s: float) -> None:
        on = np.array([torque_on[i] for i in self.ids])
        self._started |= bool(on.any())
        if not self._started:
            return
        goal_rad = np.array([goal_rad_by_id[i] for i in self.ids])
        target_rad = np.where(on, self._direction * (goal_rad - self._offset_rad), self.stepper.readings()["joint_pos"])
        # kp_scale per joint: SimRobot multiplies the drive's gains by it (a tensor broadcasts over the env)
        self.stepper.run_for(dt_s, target_rad, torch.as_tensor(on, dtype=torch.float32), None)

    def state(self) -> dict[int, tuple[float, float, float]]:
        r = self.stepper.readings()
        pos = self._offset_rad + self._direction * r["joint_pos"]
        vel = self._direction * r["joint_vel"]
        current = self._direction * r["joint_effort"] / XM430_TORQUE_PER_CURRENT_NM_PER_A
        return {i: (float(p), float(v), float(c)) for i, p, v, c in zip(self.ids, pos, vel, current, strict=True)}


class BoardSimPlant:
    """The robot's actuators behind a motor board (hardware.board_emulator's BoardPlant, wire order).

    Joint robots take POSITION commands: torque = kp (target - q) - kd q', run by MuJoCo's drives with the
    COMMAND's gains (its kp as a per-joint scale of the drive's own); outputs off is zero torque (kp and
    kd 0). Multirotors take THRUST commands, N per rotor; outputs off is zero thrust, and a rotor's angle,
    speed and thrust are not measured (NaN). The IMU is the base's: orientation and gyro from the
    readings; the accelerometer is the model's own where it has one on the IMU site (MuJoCo's
    accelerometer: specific force, +9.81 up at rest), else, and before physics starts, gravity alone in
    the body frame (what an accelerometer reads at rest; a walking robot's own accelerations are left
    out)."""

    def __init__(self, stepper: PhysicsStepper, robot: RobotCfg):
        self.stepper = stepper
        self.num_actuators = len(robot.actuator_names)
        self.joint_robot = robot.joints is not None
        self.modes = (CommandMode.POSITION,) if self.joint_robot else (CommandMode.THRUST,)
        self._nominal_kp = np.array(robot.joints.per_joint("kp")) if robot.joints is not None else None
        self._has_imu = stepper.sim.has_base
        self._accel_adr = _accelerometer(stepper.sim.env.backend.model, robot.imu_site)
        self._command: Command | None = None
        self._started = False

    def _outputs_off(self) -> tuple:
        """(command, kp_scale, kd) for SimRobot.step: zero torque, or zero thrust."""
        if self.joint_robot:
            return self.stepper.readings()["joint_pos"], 0.0, np.zeros(self.num_actuators)
        return np.zeros(self.num_actuators), 1.0, None

    def apply(self, command: Command | None) -> None:
        self._command = command
        self._started |= command is not None

    def step(self, dt_s: float) -> None:
        c = self._command
        if not self._started:
            return
        if c is None:
            self.stepper.run_for(dt_s, *self._outputs_off())
        elif self.joint_robot:
            kp_scale = torch.as_tensor(np.asarray(c.kp_Nm_per_rad) / self._nominal_kp, dtype=torch.float32)
            self.stepper.run_for(dt_s, np.asarray(c.targets), kp_scale, np.asarray(c.kd_Nms_per_rad))
        else:
            self.stepper.run_for(dt_s, np.asarray(c.targets), 1.0, None)

    def state(self) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...], Imu | None]:
        r = self.stepper.readings()
        if self.joint_robot:
            pos, vel, effort = (tuple(map(float, r[k])) for k in ("joint_pos", "joint_vel", "joint_effort"))
        else:
            pos = vel = effort = (math.nan,) * self.num_actuators
        if not self._has_imu:
            return pos, vel, effort, None
        quat = r["base_quat_wxyz"]
        if self._accel_adr is not None and self.stepper.started:
            accel = self.stepper.sim.env.backend.sensordata[0, self._accel_adr : self._accel_adr + 3].numpy()
        else:
            accel = -GRAVITY_MPS2 * projected_gravity(quat_to_rotmat(quat))
        qw, qx, qy, qz = map(float, quat)
        gx, gy, gz = map(float, r["base_ang_vel_b"])
        ax, ay, az = map(float, accel)
        imu = Imu(quat_wxyz=(qw, qx, qy, qz), gyro_rad_s=(gx, gy, gz), accel_m_s2=(ax, ay, az))
        return pos, vel, effort, imu


def _accelerometer(model: mujoco.MjModel, imu_site: str) -> int | None:
    """sensordata address of the model's accelerometer on `imu_site`, or None."""
    if not imu_site:
        return None
    site = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_SITE, imu_site)
    for i in range(model.nsensor):
        if model.sensor_type[i] == mujoco.mjtSensor.mjSENS_ACCELEROMETER and model.sensor_objid[i] == site:
            return int(model.sensor_adr[i])
    return None
