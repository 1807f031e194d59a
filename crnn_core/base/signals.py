"""SIGINT and SIGTERM outside the training loop: the documented exit codes from the first instruction to the last.

The training loop has its own handler (``train._StopFlag``: finish the step, save
``last.pt``, exit 130/143). Before it starts (plugin imports, data generation, model
building) and after it ends, ``install`` makes either signal raise ``SignalInterrupt``
(a ``KeyboardInterrupt``, so code that isolates plugin failures lets it through), and
``report`` turns it into one line and the shell's exit status (128 + the signal's
number), with the command that continues or restarts the run when one was started.

Once a signal has been received, more signals are ignored while crnn unwinds (a second
Ctrl-C must not turn the one-line message into a traceback), and ``check`` raises the
first one again at the next safe point if code in between swallowed it (a bare
``except:`` in an imported library). When the command has finished, ``finish`` ignores
both signals, so one that arrives while the interpreter shuts down cannot replace the
command's exit status (Python restores the default handlers while it finalises).
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any, Callable

_RUN_DIR: Path | None = None
_RESTART: Callable[[Path], str | None] | None = None  # the command that restarts _RUN_DIR's run, if any
_RECEIVED: int | None = None  # the first signal received outside the training loop
_ABORTED: int | None = None  # the signal received twice inside the training loop (``abort``)


class SignalInterrupt(KeyboardInterrupt):
    """SIGINT or SIGTERM received outside the training loop, or (``repeated``) the same signal
    twice inside it, which aborts at once (``train.StopOnSignal``)."""

    def __init__(self, signum: int, repeated: bool = False) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)
        self.repeated = repeated


def _raise(signum: int, frame: Any) -> None:
    global _RECEIVED
    if _RECEIVED is not None:  # already stopping: a second signal must not interrupt the unwinding
        return
    _RECEIVED = int(signum)
    raise SignalInterrupt(signum)


def abort(signum: int | None) -> SignalInterrupt | None:
    """The same signal a second time inside the training loop: the exception that aborts at once
    (``None``: a new training loop starts, nothing is aborting).

    It is remembered: :func:`pending` finds it when torch.save turns it into a RuntimeError."""
    global _ABORTED
    _ABORTED = None if signum is None else int(signum)
    return None if signum is None else SignalInterrupt(signum, repeated=True)


def pending(default: KeyboardInterrupt) -> KeyboardInterrupt:
    """The repeated signal that a library wrapped into another exception, or ``default``."""
    return SignalInterrupt(_ABORTED, repeated=True) if _ABORTED is not None else default


def check() -> None:
    """Raise the signal received earlier again, if something swallowed its ``SignalInterrupt``."""
    if _RECEIVED is not None:
        raise SignalInterrupt(_RECEIVED)


def finish() -> None:
    """The command is over: from now on SIGINT and SIGTERM are ignored (the exit status is decided)."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, signal.SIG_IGN)
        except (ValueError, OSError):
            pass


def install() -> None:
    """Make SIGINT and SIGTERM raise ``SignalInterrupt`` (the command line calls this first)."""
    global _RECEIVED
    _RECEIVED = None
    note_run_dir(None)
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, _raise)
        except (ValueError, OSError):  # not the main thread, or an embedding that forbids it
            pass


def note_run_dir(path: Path | None, restart: Callable[[Path], str | None] | None = None) -> None:
    """The run directory this process writes (set when it is locked, kept after the lock is released
    so that the message printed while the command unwinds can name it), for the interruption message;
    ``restart(path)`` gives the command that starts its run again when it has no checkpoint (or None)."""
    global _RUN_DIR, _RESTART
    _RUN_DIR, _RESTART = path, restart


def report(exc: BaseException) -> int:
    """Print the one-line message for an interruption and return the exit status."""
    sys.stderr.write(message(exc) + "\n")  # the command's last line, like its "Error: ..." lines (not a warning)
    note_run_dir(None)
    return 128 + int(getattr(exc, "signum", signal.SIGINT))


def message(exc: BaseException) -> str:
    if not isinstance(exc, SignalInterrupt):
        return "Interrupted."  # a KeyboardInterrupt that no crnn handler raised (e.g. an embedding program's)
    name = signal.Signals(exc.signum).name
    run_dir = _RUN_DIR
    if exc.repeated:
        kept = ""
        if run_dir is not None and (run_dir / "checkpoints" / "last.pt").is_file():
            kept = f"; {run_dir / 'checkpoints' / 'last.pt'} is unchanged; continue with: crnn run --resume {run_dir}"
        return f"Interrupted: {name} received twice: stopped at once, nothing new saved{kept}"
    if run_dir is None:
        return f"Interrupted: {name} received during start-up; nothing was written"
    last = run_dir / "checkpoints" / "last.pt"
    if last.is_file():
        return f"Interrupted: {name} received outside training; {last} is unchanged; continue with: crnn run --resume {run_dir}"
    command = _RESTART(run_dir) if _RESTART is not None else None
    if command:
        return f"Interrupted: {name} received before the first checkpoint of {run_dir}; start it again with: {command}"
    return f"Interrupted: {name} received; nothing was saved in {run_dir}"
