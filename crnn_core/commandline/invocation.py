"""The arguments of this ``crnn`` invocation, which a run records in its command.txt."""

from __future__ import annotations

_ARGS: list[str] = []


def set_invocation_args(args: list[str]) -> None:
    """Record the command-line arguments (after ``crnn``) of this invocation."""
    _ARGS[:] = list(args)


def invocation_args() -> list[str]:
    """The arguments recorded by :func:`set_invocation_args` (empty before any invocation)."""
    return list(_ARGS)
