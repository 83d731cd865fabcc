import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import sim  # noqa: E402,F401  chooses MuJoCo's GL back end before any test module imports mujoco
