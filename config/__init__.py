"""Typed configs and their validation, below everything else: sim, deploy and policies import them,
they import nothing of the project (stdlib and PyYAML only)."""
