"""Sizes checked against memory before allocating.

A size option that is valid as a number can still ask for more memory than the machine
has (``--set task.train_size=10**12``, ``crnn sample -n 10**10``, ``crnn bench --hidden
100000``); the allocation then fails deep inside PyTorch (or the kernel kills the process).
Code that is about to allocate something large estimates the bytes and calls
:func:`check_memory`, which refuses with a one-line ``ConfigError`` (exit 2) naming the
option to lower, before anything is allocated or written. The estimates count what stays
allocated, not the temporaries made while building it (an identity matrix while initialising
a weight, a copy while casting), so an estimate may use only :data:`MEMORY_FRACTION` of the
available memory.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

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


#: The share of the available memory an estimate may ask for; the rest is left for the
#: temporaries the estimates leave out and for the rest of the process.
MEMORY_FRACTION = 0.8


def check_memory(nbytes: float, what: str, lower: str) -> None:
    """Refuse (``ConfigError``, exit 2) if ``what`` needs more than :data:`MEMORY_FRACTION`
    of the available memory.

    ``nbytes`` is the estimate, ``what`` says what would be allocated (``"the ART training
    set"``), ``lower`` names the option(s) to lower (``"task.train_size"``).
    """
    free = available_memory()
    if nbytes > MEMORY_FRACTION * free:
        raise ConfigError(f"{what} needs about {gigabytes(nbytes)} of memory, more than the "
                          f"{gigabytes(MEMORY_FRACTION * free)} crnn may use ({MEMORY_FRACTION:.0%} of the "
                          f"{gigabytes(free)} available on this machine): lower {lower}")


#: Float32 copies of each trained parameter alive at once: the value, its gradient and Adam's two moments.
TRAINED_COPIES = 4


def check_parameters(count: float, what: str, lower: str) -> None:
    """Refuse (``ConfigError``, exit 2) ``count`` float32 parameters that, with their gradients
    and Adam's two moments, need more than :func:`check_memory` allows; called by a component's
    constructor before it allocates them (``what``: ``"the LSTM weights"``; ``lower``: the option)."""
    check_memory(TRAINED_COPIES * FLOAT32 * count, what, lower)


def usable_cpus(root: Path | str = "/") -> int:
    """How many CPUs this process may really use: the CPUs its affinity mask allows
    (``taskset``, a batch scheduler's cpuset), lowered to its cgroup's CPU quota (a
    container's ``--cpus``: cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``),
    rounded up, at least 1. ``os.cpu_count()`` counts the machine's CPUs, which a process on
    a shared machine may be far from getting. ``root`` is the file system root (tests use a fake one)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota(Path(root))
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def cgroup_cpu_quota(root: Path) -> float | None:
    """This process's cgroup CPU quota in CPUs (``200000 100000`` in cpu.max: 2.0), or None
    without one (``max``, no cgroup file system, unreadable files). The cgroup is the
    process's own, from /proc/self/cgroup, else the root of the hierarchy."""
    for version, relative in _cgroup_paths(root):
        base = root / "sys/fs/cgroup"
        if version == 1:
            base = base / "cpu,cpuacct" if (base / "cpu,cpuacct").is_dir() else base / "cpu"
        folder = base / relative.lstrip("/")
        try:
            if version == 2:
                quota, period = (folder / "cpu.max").read_text().split()[:2]
                if quota == "max":
                    continue
            else:
                quota = (folder / "cpu.cfs_quota_us").read_text().strip()
                period = (folder / "cpu.cfs_period_us").read_text().strip()
                if int(quota) < 0:
                    continue
            if int(period) > 0 and int(quota) > 0:
                return int(quota) / int(period)
        except (OSError, ValueError):
            continue
    return None


def _cgroup_paths(root: Path) -> list[tuple[int, str]]:
    """(cgroup version, path of this process's cgroup) for each hierarchy that can hold a CPU quota,
    from /proc/self/cgroup (``0::/user.slice`` for v2, ``4:cpu,cpuacct:/docker/..`` for v1); the
    hierarchy's root when the file says nothing."""
    try:
        lines = (root / "proc/self/cgroup").read_text().splitlines()
    except OSError:
        lines = []
    found = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        if parts[0] == "0" and parts[1] == "":
            found.append((2, parts[2]))
        elif "cpu" in parts[1].split(","):
            found.append((1, parts[2]))
    # a container often sees its own cgroup at the hierarchy's root
    return found + [(2, "/"), (1, "/")]
