"""Distributed data-parallel training: `torchrun --nproc-per-node 2 -m crnn_core run` on this machine.

Two gloo processes on 127.0.0.1 must give the metrics of one process with the same
global batch (float tolerance), write the run directory once (rank 0), stop together
on SIGTERM, and resume.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.distributed

from crnn_core.training.distributed import DistContext, context, launched_by_torchrun
from crnn_core.rundirs.rundir import load_checkpoint

from .conftest import free_port, invoke, keep_thread_count, metrics_without_wall_time, torchrun_env

pytestmark = pytest.mark.skipif(not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
                                reason="this PyTorch has no torch.distributed with gloo")

#: 256 / 32 = 8 global steps per epoch, 16 examples per rank and step.
ARGS = ["run", "--cell", "fastweights", "--init", "learned", "--task", "art", "--seed", "1", "-q",
        "--set", "task.train_size=256", "--set", "task.val_size=128", "--batch-size", "32",
        "--set", "cell.backend=reference", "--set", "train.threads=1"]
EPOCHS = 3


def torchrun(*args: str, nproc: int = 2) -> subprocess.Popen:
    env = torchrun_env(CRNN_NO_PLUGINS="1", MASTER_ADDR="127.0.0.1")
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(nproc),
               "--master-addr", "127.0.0.1", "--master-port", str(free_port()), "-m", "crnn_core", *args]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def assert_same_metrics(got: list[dict], want: list[dict], val_size: int = 128) -> None:
    assert [(r["epoch"], r["step"]) for r in got] == [(r["epoch"], r["step"]) for r in want]
    for a, b in zip(got, want):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5), (a, b)
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4, abs=1e-5), (a, b)
        assert a["metrics"]["nll"] == pytest.approx(b["metrics"]["nll"], rel=1e-4, abs=1e-5), (a, b)
        assert abs(a["metrics"]["accuracy"] - b["metrics"]["accuracy"]) <= 1 / val_size + 1e-9, (a, b)


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The same run in one process (in-process, one thread)."""
    from click.testing import CliRunner

    out = tmp_path_factory.mktemp("one") / "run"
    with keep_thread_count():
        result = invoke(CliRunner(), [*ARGS, "--epochs", str(EPOCHS), "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    return metrics_without_wall_time(out / "metrics.jsonl")


def test_two_processes_match_one_process_write_once_and_resume_in_one(one_process, runner, tmp_path):
    out = tmp_path / "run"
    stdout, stderr = finish(torchrun(*ARGS, "--epochs", str(EPOCHS - 1), "--out", str(out)))
    assert "Traceback" not in stderr, stderr
    summaries = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
    assert len(summaries) == 1 and summaries[0]["epochs"] == EPOCHS - 1, stdout  # rank 0 alone prints
    # written once: a line per epoch
    assert_same_metrics(metrics_without_wall_time(out / "metrics.jsonl"), one_process[: EPOCHS - 1])
    assert (out / "command.txt").read_text().startswith("torchrun --nproc-per-node 2 -m crnn_core run ")
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["world_size"] == 2 and len(ckpt["rng_ranks"]) == 2
    assert not any(k.startswith("module.") for k in ckpt["model"])  # a plain state dict
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    # a checkpoint written by two processes resumes in one
    with keep_thread_count():
        result = invoke(runner, ["run", "--resume", str(out), "--epochs", str(EPOCHS), "-q"])
    assert result.exit_code == 0, result.stderr
    assert_same_metrics(metrics_without_wall_time(out / "metrics.jsonl"), one_process)


def test_sigterm_stops_every_rank_at_the_same_step_and_resume_matches(one_process, tmp_path):
    out = tmp_path / "run"
    proc = torchrun(*ARGS, "--epochs", str(EPOCHS), "--out", str(out))
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 240
    while not (metrics.exists() and metrics.read_text().count("\n") >= 1):
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no metrics in time"
        time.sleep(0.005)
    proc.send_signal(signal.SIGTERM)  # to torchrun, which forwards it to the workers
    _, stderr = finish(proc)
    assert proc.returncode != 0
    assert f"SIGTERM received: saved {out / 'checkpoints' / 'last.pt'}" in stderr, stderr
    assert f"continue with: torchrun --nproc-per-node 2 -m crnn_core run --resume {out}" in stderr
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 1 and 0 < ckpt["batch_in_epoch"] <= 8

    stdout, stderr = finish(torchrun("run", "--resume", str(out), "-q"))
    assert "Traceback" not in stderr, stderr
    assert json.loads(stdout)["epochs"] == EPOCHS
    assert_same_metrics(metrics_without_wall_time(metrics), one_process)


# -- the pieces, without processes ------------------------------------------------------------------
@pytest.mark.parametrize("batch, world", [(32, 2), (7, 2), (5, 3), (1, 2), (64, 5)])
def test_shards_cover_the_global_batch_and_weights_give_its_mean(batch, world):
    index = torch.arange(100, 100 + batch)
    parts, shares = [], []
    for rank in range(world):
        part, weight = DistContext(rank=rank, world_size=world).shard(index)
        assert weight == world * len(part) / batch or (weight == 0.0 and batch < world and len(part) == 1)
        parts.append(part if weight else part[:0])  # a weight-0 rank trains on a stand-in example
        # DDP averages over ranks: rank r's mean loss enters the gradient with weight / world = n_r / batch
        shares.append(weight / world)
    assert torch.equal(torch.cat(parts), index)
    assert math.isclose(sum(shares), 1.0)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1


def test_single_process_context_is_a_no_op():
    ctx = context()
    assert not ctx.enabled and ctx.is_main and not launched_by_torchrun()
    index = torch.arange(10)
    part, weight = ctx.shard(index)
    assert part is index and weight is None
    assert ctx.agree_max(0) == 0 and ctx.broadcast("x") == "x" and ctx.on_main(lambda: 5) == 5
    assert ctx.device_name("cuda") == "cuda" and ctx.rank_seed(7) == 7
