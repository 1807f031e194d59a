"""User-facing errors: anything raised as a ``CrnnError`` is shown as one line, no traceback."""

from __future__ import annotations

from collections.abc import Iterable

import sys
import traceback


class CrnnError(Exception):
    """A problem with the user's input or environment, reported as a one-line message.

    The CLI catches it, prints ``Error: <message>`` on stderr and exits with status
    ``exit_code`` (2, unless a subclass says otherwise; see docs/reliability.md).
    """

    exit_code: int = 2
    #: The word before the message on stderr (``Error: ...``).
    label: str = "Error"


class ConfigError(CrnnError):
    """An option, override or combination of components that cannot work."""


class PluginError(CrnnError):
    """A plugin failed to load or registered something invalid."""


class CheckpointError(CrnnError):
    """A checkpoint or run directory is missing, corrupt, or belongs to another run."""


def debug() -> bool:
    """Whether ``CRNN_DEBUG`` asks for tracebacks."""
    from .env import env_flag

    return env_flag("CRNN_DEBUG")


def show_traceback(exc: BaseException) -> None:
    """With ``CRNN_DEBUG=1``, print ``exc``'s full traceback on stderr (a plugin's own error, before it is shortened)."""
    if debug():
        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)


def closest(name: str, choices: Iterable[str]) -> str | None:
    """The choice most like ``name`` (a misspelling's "did you mean"), or None if none is close."""
    import difflib

    found = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return found[0] if found else None


def first_line(exc: BaseException, limit: int = 300, empty: str | None = None) -> str:
    """The first line of ``exc``'s message, at most ``limit`` characters (for one-line reports);
    for an empty message, ``empty`` (default: the exception's class name)."""
    lines = str(exc).strip().splitlines()
    return lines[0][:limit] if lines else (type(exc).__name__ if empty is None else empty)
