"""Trajectory analysis: the seed's diff-analyzer as functions and plots (entry point ``analysis``)."""
