"""Shared fixtures: a CLI runner and tiny task sizes so end-to-end runs take seconds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import socket

import pytest
import torch
from click.testing import CliRunner

from crnn_core.plugin_manager import manager as plugins_module

#: `--set` overrides that shrink ART to a few hundred sequences.
TINY_ART = ["--set", "task.train_size=256", "--set", "task.val_size=128", "--batch-size", "64"]


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.fixture
def fresh_plugins():
    """A plugin system with built-ins only, installed as the process-wide one for the test."""
    system = plugins_module.PluginSystem(load_entry_points=False).fill()
    plugins_module.reset_plugins(system)
    yield system
    plugins_module.reset_plugins(None)


def invoke(runner: CliRunner, args: list[str]):
    from crnn_core.commandline.main import cli

    return runner.invoke(cli, args, catch_exceptions=False)


def assert_one_line_error(result, fragment: str) -> None:
    """Non-zero exit, a single 'Error: ...' line containing ``fragment``, no traceback."""
    assert result.exit_code != 0, result.output
    lines = [line for line in result.stderr.splitlines() if line.startswith("Error")]
    assert len(lines) == 1, result.stderr
    assert fragment in lines[0], lines[0]
    assert "Traceback" not in result.stderr + result.stdout


def free_port() -> int:
    """A TCP port on the loopback interface that nothing listens on right now (for torchrun)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def metrics_without_wall_time(path: Path) -> list[dict]:
    """The records of a metrics.jsonl less their wall_time: what two equivalent runs must share."""
    return [{k: v for k, v in json.loads(line).items() if k != "wall_time"} for line in path.read_text().splitlines()]


def env_with_site(site: Path, *unset: str) -> dict[str, str]:
    """This environment with ``site`` first on PYTHONPATH (where a test installs plugin packages), less ``unset``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), os.environ.get("PYTHONPATH", "")]))
    for name in unset:
        env.pop(name, None)
    return env


def fake_distribution(site: Path, name: str, modules: dict[str, str], entry_points: str) -> dict[str, str]:
    """Write modules and a dist-info (``name`` 0.1, with ``entry_points`` as its entry_points.txt) into
    ``site``; the environment with ``site`` on PYTHONPATH and no plugin switches set."""
    site.mkdir(parents=True, exist_ok=True)
    for module, source in modules.items():
        (site / f"{module}.py").write_text(source)
    info = site / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    return env_with_site(site, "CRNN_NO_PLUGINS", "CRNN_PLUGINS_STRICT")


def crnn_process(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    """``python -m crnn_core ARGS`` in a fresh process with ``env`` (text output captured)."""
    return subprocess.run([sys.executable, "-m", "crnn_core", *args], env=env, capture_output=True, text=True, timeout=300)


@contextmanager
def keep_thread_count() -> Iterator[None]:
    """Put torch's thread count back afterwards: an in-process `crnn run` sets it (train.threads)."""
    threads = torch.get_num_threads()
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def thread_count_kept() -> Iterator[None]:
    """Every test leaves torch's thread count as it found it (an in-process `crnn run` or `fit` sets
    it; a later test would otherwise start at another count)."""
    with keep_thread_count():
        yield


def torchrun_env(**extra: str) -> dict[str, str]:
    """An environment for launching torchrun from a test: no inherited worker variables, gloo on the
    loopback interface, one OpenMP thread per worker; ``extra`` on top."""
    from crnn_core.training.distributed import TORCHRUN_VARS

    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_VARS}
    return {**env, "GLOO_SOCKET_IFNAME": "lo", "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def fused_kernel() -> None:
    """For modules that test the fused op: skip them when CRNN_NO_FUSED disables the kernel
    (read as the loader reads it, with crnn_core.base.env.env_flag), fail them when it does not load."""
    from crnn_core.base.env import env_flag
    from crnn_plugins.fast_weights import fused as fastweights_fused

    if env_flag("CRNN_NO_FUSED"):
        pytest.skip("CRNN_NO_FUSED is set: the fused kernel is disabled")
    ok, reason = fastweights_fused.load_status()
    assert ok, f"the fused kernel failed to load: {reason}"
