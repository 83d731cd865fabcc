"""s2r: sim-to-real robot control. The command line lives in s2r.cli."""

__version__ = "0.1.0"
