"""SIGINT and SIGTERM outside the training loop: the documented exit codes from the first instruction to the last.

The training loop has its own handler (``train._StopFlag``: finish the step, save
``last.pt``, exit 130/143). Before it starts (plugin imports, data generation, model
building) and after it ends, ``install`` makes either signal raise ``SignalInterrupt``
(a ``KeyboardInterrupt``, so code that isolates plugin failures lets it through), and
``report`` turns it into one line and the shell's exit status (128 + the signal's
number), with the command that continues or restarts the run when one was started.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

_RUN_DIR: Path | None = None


class SignalInterrupt(KeyboardInterrupt):
    """SIGINT or SIGTERM received outside the training loop."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def _raise(signum: int, frame: Any) -> None:
    raise SignalInterrupt(signum)


def install() -> None:
    """Make SIGINT and SIGTERM raise ``SignalInterrupt`` (the command line calls this first)."""
    note_run_dir(None)
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, _raise)
        except (ValueError, OSError):  # not the main thread, or an embedding that forbids it
            pass


def note_run_dir(path: Path | None) -> None:
    """The run directory this process writes (set when it is locked, kept after the lock is released
    so that the message printed while the command unwinds can name it), for the interruption message."""
    global _RUN_DIR
    _RUN_DIR = path


def report(exc: BaseException) -> int:
    """Print the one-line message for an interruption and return the exit status."""
    print(message(exc), file=sys.stderr)
    note_run_dir(None)
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


def message(exc: BaseException) -> str:
    if not isinstance(exc, SignalInterrupt):
        return "Interrupted."  # the same signal twice: abort at once, nothing new saved
    name = signal.Signals(exc.signum).name
    run_dir = _RUN_DIR
    if run_dir is None:
        return f"Interrupted: {name} received during start-up; nothing was written"
    from .rundir import restart_command

    last = run_dir / "checkpoints" / "last.pt"
    if last.is_file():
        return f"Interrupted: {name} received outside training; {last} is unchanged; continue with: crnn run --resume {run_dir}"
    command = restart_command(run_dir)
    if command:
        return f"Interrupted: {name} received before the first checkpoint of {run_dir}; start it again with: {command}"
    return f"Interrupted: {name} received; nothing was saved in {run_dir}"
