"""The ``crnn`` console script and ``python -m crnn_core``: signal handling first, then the command line.

A command's module imports PyTorch, which takes a second or two; this module installs the
SIGINT/SIGTERM handlers before any of that (``crnn_core/__init__.py`` and the command
group import nothing heavy), so an interruption at any moment ends with one line and 130 / 143.
"""

from __future__ import annotations

import importlib
import os
import sys
from types import ModuleType


#: Spins of an idle OpenMP thread before it sleeps (libgomp's ``GOMP_SPINCOUNT``). libgomp's
#: default, 300000, lets each of PyTorch's idle intra-op threads (and the fused kernel's
#: ``at::parallel_for``) spin for milliseconds after every parallel region; on a machine whose
#: cores other processes share, that spinning takes the CPU from the threads still working and
#: from the other processes. Fewer spins trade quiet speed for loaded speed: measured on 2 cores
#: (benchmarks/results/threads_2026-12-07/NOTES.md), an ART epoch took 1.58 / 1.66 / 2.03 /
#: 2.68 s quiet and 37.9 / 6.9 / 7.9 / 5.4 s beside two busy processes at 300000 / 30000 /
#: 10000 / 1000 spins; 30000 keeps the quiet epoch within its run-to-run spread.
OPENMP_SPINCOUNT = "30000"


def limit_openmp_spinning(environ: dict[str, str] | None = None) -> None:
    """Set ``GOMP_SPINCOUNT`` (see :data:`OPENMP_SPINCOUNT`) unless the user chose a wait policy
    (``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT``); it must happen before PyTorch loads OpenMP."""
    environ = os.environ if environ is None else environ
    if "OMP_WAIT_POLICY" not in environ and "GOMP_SPINCOUNT" not in environ:
        environ["GOMP_SPINCOUNT"] = OPENMP_SPINCOUNT


def _import_cli() -> ModuleType:
    return importlib.import_module("crnn_core.commandline.main")


def main() -> None:
    """Install the signal handlers and the OpenMP wait policy, then run the command line."""
    from ..base import signals

    signals.install()
    limit_openmp_spinning()
    try:
        try:
            cli = _import_cli()
            signals.check()  # a signal whose exception a library's bare `except:` swallowed while importing
        except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM while PyTorch imports
            sys.exit(signals.report(exc))
        cli.main()
    finally:
        signals.finish()
