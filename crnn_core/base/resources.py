"""Sizes checked against memory before allocating (issue 11 item 6).

A size option that is valid as a number can still ask for more memory than the machine
has (``--set task.train_size=10**12``, ``crnn sample -n 10**10``, ``crnn bench --hidden
100000``); the allocation then fails deep inside PyTorch (or the kernel kills the process).
Code that is about to allocate something large estimates the bytes and calls
:func:`check_memory`, which refuses with a one-line ``ConfigError`` (exit 2) naming the
option to lower, before anything is allocated or written.
"""

from __future__ import annotations

import os

from .errors import ConfigError

#: Bytes of one float32 / int64 element, for estimates.
FLOAT32 = 4
INT64 = 8


def available_memory() -> int:
    """Bytes of memory available to a new allocation: ``MemAvailable`` from /proc/meminfo,
    else free physical pages (``os.sysconf``), else (unknown) a very large number."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 2**62


def gigabytes(nbytes: float) -> str:
    """``12.3 GB`` (decimal), for messages."""
    return f"{nbytes / 1e9:.3g} GB"


def check_memory(nbytes: float, what: str, lower: str) -> None:
    """Refuse (``ConfigError``, exit 2) if ``what`` needs more than the available memory.

    ``nbytes`` is the estimate, ``what`` says what would be allocated (``"the ART training
    set"``), ``lower`` names the option(s) to lower (``"task.train_size"``).
    """
    free = available_memory()
    if nbytes > free:
        raise ConfigError(f"{what} needs about {gigabytes(nbytes)} of memory, more than the {gigabytes(free)} "
                          f"available on this machine: lower {lower}")
