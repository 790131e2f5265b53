"""Analytical performance model (cycles and memory traffic) of the vitaccel engine."""
