"""Pure batched rotation math on torch tensors. Quaternions are (w, x, y, z), MuJoCo's order.
quat_to_rotmat, world_to_body and projected_gravity live in deploy.signals: the robot uses them too."""

from __future__ import annotations

import torch


def tilt_quat(u: torch.Tensor, max_tilt_rad: float) -> torch.Tensor:
    """(n, 3) uniform [0, 1) samples -> (n, 4) attitudes: uniform yaw, then a tilt of up to
    `max_tilt_rad` about a uniformly random horizontal axis.

    The product q_tilt * q_yaw written out: q_tilt = (cos t/2, sin t/2 (cos h, sin h, 0)) and
    q_yaw = (cos y/2, 0, 0, sin y/2) leave four terms (it runs on every reset, a dozen small ops).
    """
    half_yaw = (u[:, 0] - 0.5) * torch.pi
    half_tilt = u[:, 1] * (0.5 * max_tilt_rad)
    heading = u[:, 2] * (2 * torch.pi)
    c_t, s_t = torch.cos(half_tilt), torch.sin(half_tilt)
    c_y, s_y = torch.cos(half_yaw), torch.sin(half_yaw)
    ax, ay = torch.cos(heading) * s_t, torch.sin(heading) * s_t
    return torch.stack((c_t * c_y, ax * c_y + ay * s_y, ay * c_y - ax * s_y, c_t * s_y), dim=-1)
