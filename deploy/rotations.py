"""Rotations and quaternions, batched, for numpy arrays and torch tensors alike: the one module for them.
Quaternions are (w, x, y, z), MuJoCo's and ROS messages' order; rotation matrices are body to world.
The training env and the robot runtime both use these, so a frame means the same on both sides."""

from __future__ import annotations

import math

import numpy as np

from deploy.arrays import constant_like, is_torch


def _namespace(x):
    if is_torch(x):
        import torch

        return torch
    return np


def _rotmat_of_outer() -> np.ndarray:
    """(9, 16): the rotation matrix of a unit quaternion is linear in its outer product q q^T
    (1 = ww + xx + yy + zz makes every entry quadratic), so one matrix product computes it."""
    c = np.zeros((9, 4, 4))
    w, x, y, z = range(4)
    for k, terms in enumerate(
        [
            [(w, w, 1), (x, x, 1), (y, y, -1), (z, z, -1)],
            [(x, y, 2), (w, z, -2)],
            [(x, z, 2), (w, y, 2)],
            [(x, y, 2), (w, z, 2)],
            [(w, w, 1), (x, x, -1), (y, y, 1), (z, z, -1)],
            [(y, z, 2), (w, x, -2)],
            [(x, z, 2), (w, y, -2)],
            [(y, z, 2), (w, x, 2)],
            [(w, w, 1), (x, x, -1), (y, y, -1), (z, z, 1)],
        ]
    ):
        for i, j, v in terms:
            c[k, i, j] = v
    return c.reshape(9, 16)


ROTMAT_OF_OUTER = _rotmat_of_outer()
_ROTMAT_OF_OUTER_LIKE: dict = {}  # (dtype, device) -> the constant as a torch tensor


def quat_to_rotmat(q):
    """(..., 4) unit quaternions (w, x, y, z) -> (..., 3, 3) body-to-world rotation matrices, numpy or torch.

    Four array operations whatever the batch (the training env runs it on every step and reset), on
    quaternion components laid out as contiguous rows, where elementwise work is fastest."""
    flat = q.reshape(-1, 4)
    if is_torch(q):
        q_t = flat.T.contiguous()
        key = (q.dtype, q.device)
        if key not in _ROTMAT_OF_OUTER_LIKE:
            _ROTMAT_OF_OUTER_LIKE[key] = constant_like(ROTMAT_OF_OUTER, q)
        c = _ROTMAT_OF_OUTER_LIKE[key]
    else:
        q_t, c = np.ascontiguousarray(flat.T), ROTMAT_OF_OUTER.astype(q.dtype, copy=False)
    outer = (q_t[:, None] * q_t[None]).reshape(16, -1)  # (16, n)
    return (c @ outer).T.reshape(tuple(q.shape[:-1]) + (3, 3))


def world_to_body(rot, v_w):
    """(..., 3, 3) body-to-world rotations, (..., 3) world vectors -> (..., 3) body-frame vectors."""
    return (rot.swapaxes(-1, -2) @ v_w[..., None])[..., 0]


def projected_gravity(rot):
    """World -z in the body frame, (..., 3): what a level robot's accelerometer direction reads."""
    return -rot[..., 2, :]


def tilt_quat(u, max_tilt_rad: float):
    """(n, 3) uniform [0, 1) samples -> (n, 4) attitudes: uniform yaw, then a tilt of up to
    `max_tilt_rad` about a uniformly random horizontal axis.

    The product q_tilt * q_yaw written out: q_tilt = (cos t/2, sin t/2 (cos h, sin h, 0)) and
    q_yaw = (cos y/2, 0, 0, sin y/2) leave four terms (it runs on every reset, a dozen small ops).
    """
    xp = _namespace(u)
    half_yaw = (u[:, 0] - 0.5) * math.pi
    half_tilt = u[:, 1] * (0.5 * max_tilt_rad)
    heading = u[:, 2] * (2 * math.pi)
    c_t, s_t = xp.cos(half_tilt), xp.sin(half_tilt)
    c_y, s_y = xp.cos(half_yaw), xp.sin(half_yaw)
    ax, ay = xp.cos(heading) * s_t, xp.sin(heading) * s_t
    return xp.stack((c_t * c_y, ax * c_y + ay * s_y, ay * c_y - ax * s_y, c_t * s_y), -1)


def quat_conj(q: np.ndarray) -> np.ndarray:
    return q * np.array([1.0, -1.0, -1.0, -1.0])


def quat_mul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Hamilton product of (..., 4) w, x, y, z quaternions (numpy)."""
    aw, ax, ay, az = np.moveaxis(a, -1, 0)
    bw, bx, by, bz = np.moveaxis(b, -1, 0)
    return np.stack(
        (
            aw * bw - ax * bx - ay * by - az * bz,
            aw * bx + ax * bw + ay * bz - az * by,
            aw * by - ax * bz + ay * bw + az * bx,
            aw * bz + ax * by - ay * bx + az * bw,
        ),
        axis=-1,
    )


def attitude_error_rad(q_pred: np.ndarray, q_ref: np.ndarray) -> np.ndarray:
    """(..., 3) rotation vector of q_ref^-1 q_pred (body frame of the reference); its norm is the
    geodesic angle between the two attitudes."""
    d = quat_mul(quat_conj(q_ref), q_pred)
    d = np.where(d[..., :1] < 0, -d, d)  # shortest way round
    vec_norm = np.linalg.norm(d[..., 1:], axis=-1, keepdims=True)
    angle = 2 * np.arctan2(vec_norm, d[..., :1])
    return np.where(vec_norm > 1e-12, d[..., 1:] * angle / np.maximum(vec_norm, 1e-12), 2 * d[..., 1:])
