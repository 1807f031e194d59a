"""Shared by benchmarks/untrusted_files.py and benchmarks/cli_fuzz.py: run ``crnn`` invocations as
subprocesses, two at a time, and sort each outcome into the classes docs/reliability.md counts.

Outcome classes: ``ok`` (exit 0), ``refused`` (exit 2, 3, 130 or 143 with exactly one
``Error:``/``Interrupted:`` line on stderr and no traceback), ``internal`` (exit 1: crnn's own
"internal error"), ``crash`` (killed by a signal, a traceback, or a refusal that is not one
line), ``timeout`` (still running after the limit: valid but long, e.g. ``--epochs 10**9``).
Each invocation's peak resident memory (``ru_maxrss`` of the process and its children) is kept:
a refusal or a tiny run above :data:`MEMORY_LIMIT_GB` is a memory blow-up (class ``memory``).
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

PY = sys.executable
ENV = dict(os.environ, CRNN_NO_PLUGINS="1", OMP_NUM_THREADS="1")
#: The tiny ART settings every training invocation starts from (4 steps per epoch).
TINY = ["--set", "task.train_size=256", "--set", "task.val_size=128", "--batch-size", "64", "--epochs", "1",
        "--set", "cell.backend=reference", "--set", "train.threads=1", "-q"]
#: Peak resident memory above which an invocation of these tiny cases counts as a memory blow-up.
MEMORY_LIMIT_GB = 3.0


@dataclass
class Outcome:
    """One invocation: its arguments, exit status, class and the last stderr line."""

    args: list[str]
    code: int
    kind: str
    last: str = ""
    extra: dict = field(default_factory=dict)
    stdout: str = ""
    stderr: str = ""
    peak_gb: float = 0.0


def classify(code: int, stderr: str) -> str:
    """The outcome class of an exit status and stderr (see the module docstring)."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    if code < 0 or "Traceback (most recent call last)" in stderr:
        return "crash"
    if code == 0:
        return "ok"
    if code == 1 and any("internal error" in line for line in lines):
        return "internal"
    if code in (2, 3, 130, 143):
        heads = [line for line in lines if line.startswith(("Error:", "Interrupted:", "Usage:"))]
        if code == 2 and any(line.startswith("Usage:") for line in lines):  # click's usage error: one Error line
            heads = [line for line in lines if line.startswith("Error:")]
        return "refused" if len(heads) == 1 else "crash"
    return "crash"


def _wait(pid: int, timeout: float) -> tuple[int, float] | None:
    """Wait for ``pid``: its exit status (negative: the signal) and peak memory in GB; None after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), usage.ru_maxrss / 2**20  # ru_maxrss is in KiB on Linux
        if time.monotonic() > deadline:
            return None
        time.sleep(0.05)


def crnn(args: list[str], cwd: Path, timeout: float = 90) -> Outcome:
    """Run ``python -m crnn_core ARGS`` in ``cwd`` and classify it, with its peak memory."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([PY, "-m", "crnn_core", *args], cwd=cwd, env=ENV, stdout=out, stderr=err, text=True,
                                stdin=subprocess.DEVNULL, start_new_session=True)
        waited = _wait(proc.pid, timeout)
        if waited is None:
            os.killpg(proc.pid, signal.SIGKILL)  # its children too (crnn reproduce starts crnn run processes)
            os.waitpid(proc.pid, 0)
        proc.returncode = -9 if waited is None else waited[0]  # reaped here: Popen must not wait for it again
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if waited is None:
        return Outcome(args, 124, "timeout", stdout=stdout, stderr=stderr)
    code, peak = waited
    kind = classify(code, stderr)
    if peak > MEMORY_LIMIT_GB and kind != "crash":
        kind = "memory"
    tail = (stderr.strip().splitlines() or [""])[-1][:200]
    return Outcome(args, code, kind, tail, stdout=stdout, stderr=stderr, peak_gb=round(peak, 2))


def run_all(cases: list[list[str]], cwd: Path, jobs: int = 2, timeout: float = 90) -> list[Outcome]:
    """Every case, ``jobs`` at a time, in order."""
    with ThreadPoolExecutor(jobs) as pool:
        return list(pool.map(lambda a: crnn(a, cwd, timeout), cases))


def summary(outcomes: list[Outcome]) -> dict:
    """Counts per class and the invocations that were neither ok nor refused."""
    counts = Counter(o.kind for o in outcomes)
    bad = [{"args": o.args, "code": o.code, "kind": o.kind, "last": o.last}
           for o in outcomes if o.kind in ("internal", "crash", "timeout", "memory")]
    return {"invocations": len(outcomes), "counts": dict(sorted(counts.items())),
            "peak_memory_gb": max((o.peak_gb for o in outcomes), default=0.0), "failures": bad}
