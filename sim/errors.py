"""The error classes every layer can raise (the ground floor, so no layer imports upward for them).

:class:`UserError` is the base of every error a user can cause with their input (a bad flag, a
missing or foreign file, a program the hardware cannot run). The command line
(:func:`vitaccel.cli.main`) prints it as ``vitaccel COMMAND: error: MESSAGE`` without a traceback
and exits with code 2; anything else is an internal bug and keeps its traceback.
"""
from __future__ import annotations

__all__ = ["UserError"]


class UserError(Exception):
    """An error caused by the user's input; printed without a traceback (exit code 2)."""
