"""Grids on Ray: ``crnn reproduce ... --executor ray [--address ADDR]`` (docs/scaling.md).

Each grid run is a Ray task asking for ``train.threads`` CPUs; it calls the same
:func:`crnn_core.experiments.local.execute` as the local pool (a ``crnn run`` process, resumed from
its ``last.pt`` when the run directory has one), so the runs, their files and the report
are the local executor's. Without ``--address`` an embedded Ray starts for the grid (no
dashboard, warnings only) and stops after it; with one, the tasks go to that cluster,
whose nodes must see ``--out`` at the same path (a shared filesystem).

A run whose worker dies (a lost node, the OOM killer, kill -9) or whose ``crnn run`` is
killed by a signal is retried up to :data:`RETRIES` times: the killed process saves
``last.pt`` (it gets SIGTERM when its worker dies), the retry waits for it to release the
run directory and resumes from that checkpoint. The ``ray`` package is an optional extra
(``pip install 'crnn[ray]'``), imported here only.
"""

from __future__ import annotations

import logging
import socket
from typing import Any, Callable

from ..base.env import install_command
from ..base.errors import ConfigError, CrnnError, first_line
from .local import GridRun, RunKilled, execute

#: Retries of a grid run whose worker died or whose process was killed (a failing run is not retried).
RETRIES = 3


def import_ray() -> Any:
    """The ``ray`` module, or a one-line error naming the extra."""
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--executor ray needs the ray package, an optional extra: {install_command('ray')}") from None
    return ray


def grid_task(run: GridRun, epochs: int, threads: int) -> dict[str, Any]:
    """One grid run inside a Ray worker, on any node of the cluster; returns its summary."""
    if not run.path.parent.is_dir():
        raise ConfigError(f"--out {run.path.parent} is not visible on Ray node {socket.gethostname()}: a grid on a "
                          "cluster needs --out on storage that every node mounts at the same path (docs/scaling.md)")
    return execute(run, epochs, threads)


def run_on_ray(todo: list[GridRun], epochs: int, threads: int, address: str | None, cpus: int | None,
               on_done: Callable[[GridRun, dict[str, Any]], None]) -> None:
    """Run ``todo`` as Ray tasks of ``threads`` CPUs on the cluster at ``address``, or on an embedded
    Ray of ``cpus`` CPUs started and stopped here; ``on_done(run, summary)`` as each finishes."""
    ray = import_ray()
    quiet = {"include_dashboard": False, "logging_level": logging.WARNING, "log_to_driver": False}
    try:
        if address:
            ray.init(address=address, **quiet)
        else:  # a private instance: its token-authentication notice is noise
            logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
            ray.init(address="local", num_cpus=cpus, **quiet)  # "local": a new instance even if RAY_ADDRESS is set
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"the Ray cluster at {address}" if address else "an embedded Ray"
        raise ConfigError(f"cannot start {where}: {first_line(exc, 200)}") from None
    try:
        task = ray.remote(grid_task).options(num_cpus=threads, max_retries=RETRIES, retry_exceptions=[RunKilled])
        pending = {task.remote(run, epochs, threads): run for run in todo}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            run = pending.pop(ready[0])
            on_done(run, _result(ray, ready[0], run))
    finally:
        ray.shutdown()


def _result(ray: Any, ref: Any, run: GridRun) -> dict[str, Any]:
    """A finished task's summary, or its failure as a one-line error."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as exc:  # the task raised: a failing run, or killed RETRIES + 1 times
        cause = getattr(exc, "cause", None)
        if isinstance(cause, CrnnError):
            raise ConfigError(str(cause)) from None
        raise ConfigError(f"grid run {run.path} failed on Ray: {first_line(exc, 200, empty='')}") from None
    except ray.exceptions.RayError as exc:  # its worker died RETRIES + 1 times, or the node was lost
        raise ConfigError(f"grid run {run.path} was lost on Ray after {RETRIES} retries ({type(exc).__name__}); "
                          "run the grid again to resume it from its last checkpoint") from None
