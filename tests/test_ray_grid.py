"""`crnn reproduce --executor ray`: a small grid on an embedded Ray of 2 CPUs gives the files of
`--jobs 2`, and a run whose Ray worker is killed (kill -9) mid-run is retried and resumed from its
checkpoint, not lost. One grid of each executor, shared by the assertions (Ray starts once)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from crnn_core.rundirs.rundir import _lock_holder

from .conftest import assert_one_line_error, invoke, metrics_without_wall_time

ray = pytest.importorskip("ray")

#: 2048 / 64 = 32 steps per epoch, about a second: time to find and kill the worker after epoch 1.
GRID = ["reproduce", "art", "--seeds", "1", "--inits", "zero,learned", "--epochs", "4", "--jobs", "2",
        "--set", "task.train_size=2048", "--set", "task.val_size=128", "--set", "cell.backend=reference",
        "--set", "train.batch_size=64"]
RUNS = ("zero_s0", "learned_s0")
KILLED = "learned_s0"
#: Summary fields that measure time, not results.
TIMINGS = ("wall_time", "process_seconds", "run_dir")


def two_cores() -> None:
    """The local grid's process on at most two cores: --jobs 2 then gives each run one thread, as on Ray."""
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, sorted(os.sched_getaffinity(0))[:2])


def grid(out: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, CRNN_NO_PLUGINS="1")
    return subprocess.Popen([sys.executable, "-m", "crnn_core", *GRID, "--out", str(out), *extra], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=two_cores)


def kill_worker_after_first_epoch(proc: subprocess.Popen, run: Path, timeout: float = 300) -> int:
    """kill -9 the Ray worker whose `crnn run` child writes ``run``, once it saved an epoch; its pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (run / "checkpoints" / "last.pt").is_file():  # epoch 1 is saved: a resume continues from it at least
            fd = os.open(run, os.O_RDONLY | os.O_DIRECTORY)
            try:
                child = _lock_holder(fd)  # the `crnn run` process that holds the run directory
            finally:
                os.close(fd)
            assert child, "no process holds the run directory"
            worker = int(Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()[1])
            assert b"ray" in Path(f"/proc/{worker}/cmdline").read_bytes().lower()  # the Ray worker, not the driver
            os.kill(worker, signal.SIGKILL)
            return worker
        if proc.poll() is not None:
            pytest.fail(f"the Ray grid ended early ({proc.returncode}): {proc.stderr.read()}")
        time.sleep(0.02)
    proc.kill()
    pytest.fail("the Ray grid's run wrote no epoch in time")


@pytest.fixture(scope="module")
def grids(tmp_path_factory) -> dict[str, Path]:
    """The same grid with --jobs 2 and on an embedded Ray (one worker killed mid-run)."""
    root = tmp_path_factory.mktemp("grids")
    outs = {"local": root / "local", "ray": root / "ray"}
    ray_grid = grid(outs["ray"], "--executor", "ray")
    kill_worker_after_first_epoch(ray_grid, outs["ray"] / KILLED)
    local_grid = grid(outs["local"])
    for name, proc in (("ray", ray_grid), ("local", local_grid)):
        _, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, f"{name}: {stderr}"
    return outs


@pytest.mark.slow
def test_a_ray_grid_writes_the_files_of_the_local_grid(grids):
    local, on_ray = grids["local"], grids["ray"]
    for run in RUNS:
        assert metrics_without_wall_time(on_ray / run / "metrics.jsonl") == metrics_without_wall_time(local / run / "metrics.jsonl")
        summaries = [json.loads((out / run / "summary.json").read_text()) for out in (local, on_ray)]
        for summary in summaries:
            for key in TIMINGS:
                summary.pop(key)
            summary["final"].pop("wall_time")
        assert summaries[0] == summaries[1] and summaries[0]["epochs"] == 4
    assert (on_ray / "results.md").read_text() == (local / "results.md").read_text()
    for figure in ("art_val_nll.png", "art_val_accuracy.png"):
        assert (on_ray / figure).read_bytes() == (local / figure).read_bytes()


@pytest.mark.slow
def test_a_run_whose_worker_was_killed_is_retried_and_resumed(grids):
    commands = (grids["ray"] / KILLED / "command.txt").read_text().splitlines()
    assert len(commands) == 2 and "--resume" in commands[1], commands  # started once, resumed once: not restarted
    records = [json.loads(line) for line in (grids["ray"] / KILLED / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records] == [1, 2, 3, 4]
    assert "--resume" not in (grids["ray"] / "zero_s0" / "command.txt").read_text()


def test_ray_options_are_checked(runner, tmp_path):
    out = ["--out", str(tmp_path)]
    assert_one_line_error(invoke(runner, ["reproduce", "art", "--address", "auto", *out]), "needs --executor ray")
    assert_one_line_error(invoke(runner, ["reproduce", "art", "--executor", "ray", "--address", "auto", "--jobs", "2", *out]),
                          "--jobs sizes this machine's share")
    assert_one_line_error(invoke(runner, ["reproduce", "art", "--executor", "ray", "--set", "train.threads=0", *out]),
                          "train.threads must be positive")


def test_a_missing_ray_package_names_the_extra(runner, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    result = invoke(runner, ["reproduce", "art", "--seeds", "1", "--inits", "zero", "--epochs", "1", "--executor", "ray",
                             "--out", str(tmp_path)])
    assert_one_line_error(result, "pip install 'ray>=2.9' (crnn's [ray] extra)")
    assert not tmp_path.joinpath("zero_s0").exists()
