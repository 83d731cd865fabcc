# MuJoCo's bindings are compiled (pybind11) and ship no type stubs, so a type checker sees none of
# mujoco.MjModel, mujoco.mj_step, ...: this partial stub says each of the module's names is Any.
from typing import Any

def __getattr__(name: str) -> Any: ...
