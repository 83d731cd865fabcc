"""Pure batched rotation math on torch tensors. Quaternions are (w, x, y, z), MuJoCo's order.
quat_to_rotmat, world_to_body and projected_gravity live in deploy.signals: the robot uses them too."""

from __future__ import annotations

import torch


def quat_from_axis_angle(axis: torch.Tensor, angle_rad: torch.Tensor) -> torch.Tensor:
    """(n, 3) unit axes, (n,) angles -> (n, 4) quaternions."""
    half = 0.5 * angle_rad
    return torch.cat((torch.cos(half)[:, None], axis * torch.sin(half)[:, None]), dim=-1)


def tilt_quat(u: torch.Tensor, max_tilt_rad: float) -> torch.Tensor:
    """(n, 3) uniform [0, 1) samples -> (n, 4) attitudes: uniform yaw, then a tilt of up to
    `max_tilt_rad` about a uniformly random horizontal axis."""
    yaw = (u[:, 0] * 2 - 1) * torch.pi
    tilt = u[:, 1] * max_tilt_rad
    heading = u[:, 2] * 2 * torch.pi
    zeros = torch.zeros_like(yaw)
    axis = torch.stack((torch.cos(heading), torch.sin(heading), zeros), dim=-1)
    z_axis = torch.stack((zeros, zeros, torch.ones_like(yaw)), dim=-1)
    return quat_mul(quat_from_axis_angle(axis, tilt), quat_from_axis_angle(z_axis, yaw))


def quat_mul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack(
        (
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ),
        dim=-1,
    )
