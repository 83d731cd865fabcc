"""Logged rollouts: bags, foreign logs, replay evaluation."""
