"""Batched MuJoCo simulation: robot models, backends, and training tasks."""

import os

# Offscreen rendering (eval videos) on a machine without a display needs EGL, and MuJoCo picks its GL
# back end when it is first imported: so choose here, before any sim module imports mujoco.
if not os.environ.get("DISPLAY"):
    os.environ.setdefault("MUJOCO_GL", "egl")
