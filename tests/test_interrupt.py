"""Interruption: SIGINT/SIGTERM on a real `crnn run` subprocess, kill -9, atomic checkpoints, --resume.

A run stopped mid-epoch and resumed must write the same metrics.jsonl lines (except
wall_time) as the same run left alone; the reference run is made once, in-process.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from crnn_core.rundirs.rundir import load_checkpoint
from crnn_core.training.train import StopOnSignal

from .conftest import assert_one_line_error, invoke, keep_thread_count, metrics_without_wall_time

#: 16 steps per epoch (256 / 16), so a signal lands mid-epoch; one thread for identical numbers in and out of process.
ARGS = ["--cell", "fastweights", "--init", "learned", "--task", "art", "--epochs", "4", "--seed", "3", "-q",
        "--set", "task.train_size=256", "--set", "task.val_size=128", "--batch-size", "16",
        "--set", "cell.backend=reference", "--set", "train.threads=1"]
STEPS_PER_EPOCH = 16


pytestmark = pytest.mark.usefixtures("thread_count_kept")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """metrics.jsonl of the run left alone (in-process)."""
    from click.testing import CliRunner

    out = tmp_path_factory.mktemp("reference") / "run"
    with keep_thread_count():
        result = invoke(CliRunner(), ["run", *ARGS, "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    return metrics_without_wall_time(out / "metrics.jsonl")


def start(out: Path) -> subprocess.Popen:
    env = dict(os.environ, CRNN_NO_PLUGINS="1")
    return subprocess.Popen([sys.executable, "-m", "crnn_core", "run", *ARGS, "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def wait_for_first_epoch(proc: subprocess.Popen, out: Path, timeout: float = 120) -> None:
    """Poll until metrics.jsonl has a line (the signal handlers are installed, epoch 2 is starting)."""
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if metrics.exists() and metrics.read_text().count("\n") >= 1:
            return
        if proc.poll() is not None:
            pytest.fail(f"crnn run ended early ({proc.returncode}): {proc.stderr.read()}")
        time.sleep(0.005)
    proc.kill()
    pytest.fail("crnn run wrote no metrics in time")


def resume(runner, out: Path, *extra: str):
    result = invoke(runner, ["run", "--resume", str(out), "-q", *extra])
    assert result.exit_code == 0, result.stderr
    return result


@pytest.mark.parametrize("sig, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_epoch_saves_last_pt_and_resume_matches(reference, runner, tmp_path, sig, code):
    out = tmp_path / "run"
    proc = start(out)
    wait_for_first_epoch(proc, out)
    proc.send_signal(sig)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == code, stderr
    assert stdout == "" and "Traceback" not in stderr
    message = stderr.strip().splitlines()[-1]
    assert message.startswith(f"Interrupted: {sig.name} received: saved {out / 'checkpoints' / 'last.pt'} at epoch 2, step ")
    assert message.endswith(f"continue with: crnn run --resume {out}")
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 1 and 0 < ckpt["batch_in_epoch"] < STEPS_PER_EPOCH, "the run did not stop mid-epoch"
    assert ckpt["step"] == STEPS_PER_EPOCH + ckpt["batch_in_epoch"]
    assert len(metrics_without_wall_time(out / "metrics.jsonl")) == 1

    resume(runner, out)
    assert metrics_without_wall_time(out / "metrics.jsonl") == reference
    assert len((out / "command.txt").read_text().splitlines()) == 2


def test_kill_9_at_a_random_moment_leaves_a_loadable_checkpoint(reference, runner, tmp_path):
    out = tmp_path / "run"
    proc = start(out)
    wait_for_first_epoch(proc, out)
    while not (out / "checkpoints" / "best.pt").exists():  # epoch 1's checkpoints are complete
        assert proc.poll() is None
        time.sleep(0.002)
    delay = random.uniform(0.0, 0.6)
    time.sleep(delay)
    proc.kill()
    proc.communicate(timeout=60)
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")  # never half-written: raises if it were
    assert ckpt["epoch"] >= 1 and ckpt["batch_in_epoch"] == 0, f"killed after {delay:.3f}s"
    load_checkpoint(out / "checkpoints" / "best.pt")
    resume(runner, out)
    assert metrics_without_wall_time(out / "metrics.jsonl") == reference, f"killed after {delay:.3f}s"


def test_a_crash_while_writing_keeps_the_previous_checkpoint(runner, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert invoke(runner, ["run", *ARGS, "--epochs", "1", "--out", str(out)]).exit_code == 0
    last = out / "checkpoints" / "last.pt"
    before = last.read_bytes()
    real_save = torch.save

    def dying_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", dying_save)
    result = invoke(runner, ["run", "--resume", str(out), "--epochs", "2", "-q"])
    monkeypatch.setattr(torch, "save", real_save)
    assert_one_line_error(result, "cannot write")
    assert "No space left on device" in result.stderr
    assert last.read_bytes() == before  # the old checkpoint, byte for byte
    assert [p.name for p in last.parent.iterdir() if p.name.endswith(".tmp")] == []
    assert load_checkpoint(last)["epoch"] == 1


def test_metrics_line_cut_short_by_a_kill_is_dropped_on_resume(reference, runner, tmp_path):
    out = tmp_path / "run"
    assert invoke(runner, ["run", *ARGS, "--epochs", "1", "--out", str(out)]).exit_code == 0
    with open(out / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "step": 32, "spl')  # killed while appending epoch 2's record
    resume(runner, out, "--epochs", "4")
    assert metrics_without_wall_time(out / "metrics.jsonl") == reference


def test_stop_flag_same_signal_twice_aborts_a_different_one_does_not():
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    with StopOnSignal() as stop:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.01)
        assert stop.signal == signal.SIGINT
        os.kill(os.getpid(), signal.SIGTERM)  # e.g. a supervisor's SIGTERM after the terminal's Ctrl-C
        time.sleep(0.01)
        assert stop.signal == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before



@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_the_same_signal_twice_in_training_exits_with_its_own_code(runner, tmp_path, monkeypatch, sig, code):
    """SIGTERM twice inside the loop aborts with 143 (it gave 130, SIGINT's code), one line, last.pt unchanged."""
    from crnn_plugins.tasks.art import ARTTask

    out = tmp_path / "run"
    assert invoke(runner, ["run", *ARGS, "--epochs", "1", "--out", str(out)]).exit_code == 0
    before = (out / "checkpoints" / "last.pt").read_bytes()
    real, calls = ARTTask.loss, {"n": 0}

    def loss(self, predictions, batch):
        if torch.is_grad_enabled():
            calls["n"] += 1
            if calls["n"] == 3:
                os.kill(os.getpid(), sig)
                os.kill(os.getpid(), sig)
                time.sleep(0.05)
        return real(self, predictions, batch)

    monkeypatch.setattr(ARTTask, "loss", loss)
    result = invoke(runner, ["run", "--resume", str(out), "--epochs", "3", "-q"])
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Interrupted: {signal.Signals(sig).name} received twice"), lines
    assert f"continue with: crnn run --resume {out}" in lines[0]
    assert (out / "checkpoints" / "last.pt").read_bytes() == before
