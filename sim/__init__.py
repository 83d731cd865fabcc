"""Batched MuJoCo simulation: robot models, backends, and training tasks."""
