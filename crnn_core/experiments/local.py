"""The local executor of experiment grids: one ``crnn run`` subprocess per grid run.

:func:`execute` runs (or resumes) one grid run and is the job of every executor: the local
pool of ``crnn reproduce --jobs J`` and a Ray task (:mod:`crnn_core.experiments.ray_grid`).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..base.errors import ConfigError, CrnnError
from ..rundirs.rundir import is_run_dir, wait_until_unlocked, write_json


@dataclass
class GridRun:
    init: str
    seed: int
    path: Path
    args: list[str]  # arguments of `crnn run` for a fresh start


def core_groups(jobs: int) -> list[set[int]]:
    """Split this process's CPU cores into ``jobs`` disjoint groups (round-robin)."""
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    jobs = min(jobs, len(cores))
    return [set(cores[i::jobs]) for i in range(jobs)]


#: How long a grid run waits for an earlier attempt of itself (a killed worker's) to release its directory.
LOCK_WAIT_SECONDS = 120.0


class RunKilled(CrnnError):
    """A grid run's ``crnn run`` process was killed by a signal; its run directory keeps the last
    checkpoint, so running it again resumes it (the Ray executor retries it)."""


class GridStopped(CrnnError):
    """The local pool is stopping (a signal, or another run failed): this run was not started."""


@dataclass
class Children:
    """The ``crnn run`` processes of a local grid, so that stopping the grid reaches every one of them.

    Each child runs in its own session, so a terminal's Ctrl-C reaches only ``crnn reproduce``,
    which then signals each running child once (:meth:`stop`): the child finishes its step,
    saves ``last.pt`` and exits, and no new run starts afterwards (:meth:`start` refuses).
    """

    running: dict[Path, subprocess.Popen[str]] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stopped_by: int | None = None  # the signal sent to the children once the grid is stopping

    def start(self, path: Path, argv: list[str], **popen: Any) -> subprocess.Popen[str]:
        """Start the child of run ``path``, unless the grid is stopping (:class:`GridStopped`)."""
        with self.lock:
            if self.stopped_by is not None:
                raise GridStopped(f"grid run {path} was not started: the grid is stopping")
            proc = subprocess.Popen(argv, start_new_session=True, **popen)
            self.running[path] = proc
            return proc

    def done(self, path: Path) -> None:
        with self.lock:
            self.running.pop(path, None)

    def stop(self, signum: int) -> list[Path]:
        """Send ``signum`` to every running child (again only when it is a second signal); return their runs."""
        with self.lock:
            self.stopped_by = int(signum)
            for proc in self.running.values():
                if proc.poll() is None:
                    proc.send_signal(signum)
            return list(self.running)


def execute(run: GridRun, epochs: int, threads: int, cores: set[int] | None = None,
            children: Children | None = None) -> dict[str, Any]:
    """Run (or resume) one grid run: a ``crnn run`` process with ``threads`` torch threads, pinned to
    ``cores`` when given and registered in ``children`` (the local pool) when given; writes and
    returns its summary. The one job of every executor (the local pool and a Ray task). Raises
    :class:`RunKilled` when the process dies of a signal."""
    if not wait_until_unlocked(run.path, LOCK_WAIT_SECONDS):
        raise ConfigError(f"grid run {run.path} is still in use by another process after {LOCK_WAIT_SECONDS:.0f}s")
    if is_run_dir(run.path) and (run.path / "checkpoints" / "last.pt").is_file():
        args = ["run", "--resume", str(run.path), "--epochs", str(epochs), "-q"]
    else:
        args = [*run.args, "--force", "--set", f"train.threads={threads}"]
    die_with_parent = _parent_death_signal()

    def prepare() -> None:  # in the child, before exec
        die_with_parent()
        if cores is not None and hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, cores)

    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    argv = [sys.executable, "-m", "crnn_core", *args]
    popen: dict[str, Any] = dict(stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=prepare, env=env)
    started = time.time()
    proc = children.start(run.path, argv, **popen) if children is not None else subprocess.Popen(argv, **popen)
    try:
        stdout, stderr = proc.communicate()
    finally:
        if children is not None:
            children.done(run.path)
    if proc.returncode != 0:
        reason = (stderr.strip().splitlines() or ["no output"])[-1]
        if proc.returncode < 0 or proc.returncode - 128 in KILLING_SIGNALS:
            raise RunKilled(f"grid run {run.path} was killed (exit {proc.returncode}); run the grid again to resume it: {reason}")
        raise ConfigError(f"grid run {run.path} failed (exit {proc.returncode}): {reason}")
    summary = json.loads(stdout.strip().splitlines()[-1])
    summary["process_seconds"] = round(time.time() - started, 1)
    write_json(run.path / "summary.json", summary)
    return summary


#: Signals whose exit status (128 + n) means the run was stopped from outside, not that it failed.
KILLING_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGKILL, signal.SIGHUP)


def _parent_death_signal() -> Callable[[], None]:
    """A function for the child (``preexec_fn``) that asks Linux for SIGTERM when its parent dies
    (``prctl(PR_SET_PDEATHSIG)``): a ``crnn run`` whose worker was killed saves ``last.pt`` and frees
    its run directory instead of running on as an orphan. A no-op elsewhere. libc is loaded here,
    in the parent, so the child only calls it."""
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return lambda: None
    return lambda: prctl(1, int(signal.SIGTERM))  # 1: PR_SET_PDEATHSIG
