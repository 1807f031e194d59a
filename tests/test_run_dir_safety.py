"""The run directory under stress: one writer, kills during checkpoint writes,
signals before the first checkpoint, a full / read-only / vanished disk, refused and empty resumes.

Every test synchronises on files, pipes or monkeypatched calls, never on sleeps.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from crnn_core.rundirs import rundir
from crnn_core.rundirs.rundir import load_checkpoint
from crnn_plugins.tasks.art import ARTTask

from .conftest import assert_one_line_error, invoke, metrics_without_wall_time

#: 4 steps per epoch; one thread so in- and out-of-process runs give identical numbers.
ARGS = ["--cell", "fastweights", "--init", "learned", "--task", "art", "--seed", "3", "-q",
        "--set", "task.train_size=256", "--set", "task.val_size=128", "--batch-size", "64",
        "--set", "cell.backend=reference", "--set", "train.threads=1"]

pytestmark = pytest.mark.usefixtures("thread_count_kept")


def run(runner, out: Path, *extra: str):
    return invoke(runner, ["run", *ARGS, "--out", str(out), *extra])


def resume(runner, out: Path, *extra: str):
    return invoke(runner, ["run", "--resume", str(out), "-q", *extra])


def snapshot(out: Path) -> dict[str, bytes]:
    """Every file of a run directory, by relative path."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def env() -> dict[str, str]:
    return dict(os.environ, CRNN_NO_PLUGINS="1")


# -- 1. one writer per run directory -------------------------------------------------------------
def test_a_second_writer_is_refused_naming_the_holders_pid(runner, tmp_path):
    """A real `crnn run` holds its directory; a concurrent --resume and a --force into it are refused."""
    out = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "crnn_core", "run", *ARGS, "--epochs", "500", "--out", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env())
    try:
        deadline = time.monotonic() + 120
        while not (out / "checkpoints" / "last.pt").exists():  # epoch 1 done: the run is under way
            assert proc.poll() is None, proc.stderr.read()
            assert time.monotonic() < deadline, "the run wrote no checkpoint in time"
            time.sleep(0.01)
        before = {name: (out / name).read_bytes() for name in ("config.json", "command.txt")}
        for attempt in (["run", "--resume", str(out), "-q", "--epochs", "600"],
                        ["run", *ARGS, "--epochs", "2", "--force", "--out", str(out)]):
            result = invoke(runner, attempt)
            assert result.exit_code == 2
            assert_one_line_error(result, f"{out} is in use by another crnn process (pid {proc.pid})")
            assert {name: (out / name).read_bytes() for name in before} == before
            assert (out / "metrics.jsonl").exists() and (out / "checkpoints" / "last.pt").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=120)
    assert proc.returncode == 130  # the holder was never disturbed; it stops and saves as usual
    assert resume(runner, out, "--epochs", str(load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] + 1)).exit_code == 0


def test_the_lock_goes_with_the_process(tmp_path):
    """A holder killed with -9 leaves no stale lock: the OS releases a flock with its process."""
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); "
                               "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()", str(out)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "locked"
    with pytest.raises(rundir.RunDirBusy, match=f"pid {holder.pid}"):
        rundir.lock_run_dir(out)
    holder.kill()
    holder.wait()
    rundir.lock_run_dir(out).release()


# -- 2. a kill during a checkpoint write ----------------------------------------------------------
class Killed(BaseException):
    """Stands for kill -9: nothing after it runs in the process (not caught as an error by crnn)."""


def test_a_kill_between_last_pt_and_best_pt_is_repaired_on_resume(runner, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    assert run(runner, reference, "--epochs", "4").exit_code == 0
    best_epoch = load_checkpoint(reference / "checkpoints" / "best.pt")["epoch"]

    import crnn_core.rundirs.run as train_module  # the run-directory writer saves and appends

    real_save = train_module.save_checkpoint
    out = tmp_path / "run"

    def save(path, payload):
        if path.name == "best.pt" and payload["epoch"] == best_epoch:  # the last improvement: last.pt is written
            (path.parent / ".best.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")  # as a kill leaves it
            raise Killed
        real_save(path, payload)

    monkeypatch.setattr(train_module, "save_checkpoint", save)
    with pytest.raises(Killed):
        run(runner, out, "--epochs", "4")
    monkeypatch.undo()
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == best_epoch
    assert resume(runner, out, "--epochs", "4").exit_code == 0

    def essence(path: Path) -> dict:
        ckpt = load_checkpoint(path)
        ckpt.pop("wall_time")
        return ckpt

    got, want = essence(out / "checkpoints" / "best.pt"), essence(reference / "checkpoints" / "best.pt")
    assert got.keys() == want.keys() and got["epoch"] == want["epoch"] == best_epoch
    assert all(torch.equal(got["model"][k], want["model"][k]) for k in want["model"])
    assert got["best"] == want["best"]
    assert [p.name for p in (out / "checkpoints").iterdir() if p.name.endswith(".tmp")] == []
    assert metrics_without_wall_time(out / "metrics.jsonl") == metrics_without_wall_time(reference / "metrics.jsonl")


def test_orphan_temp_files_are_removed_on_resume(runner, tmp_path):
    out = tmp_path / "run"
    assert run(runner, out, "--epochs", "1").exit_code == 0
    orphans = [out / "checkpoints" / ".last.pt.a1b2c3.tmp", out / "checkpoints" / ".best.pt.x.tmp",
               out / ".config.json.q.tmp", out / ".metrics.jsonl.z.tmp"]
    for orphan in orphans:
        orphan.write_bytes(b"cut short")
    assert resume(runner, out, "--epochs", "2").exit_code == 0
    assert not any(orphan.exists() for orphan in orphans)


# -- 3. signals before the first checkpoint ---------------------------------------------------------
def test_the_same_signal_twice_during_a_checkpoint_write_is_an_interruption(tmp_path, monkeypatch):
    """Ctrl-C twice while torch.save writes: torch turns the KeyboardInterrupt into a RuntimeError
    (inline_container); crnn must still see an interruption (exit 130), with the old checkpoint intact."""
    path = tmp_path / "last.pt"
    rundir.save_checkpoint(path, {"epoch": 1})
    before = path.read_bytes()
    real_save = torch.save

    class Interrupting:
        def __init__(self, f):
            self.f, self.calls = f, 0

        def write(self, data):
            self.calls += 1
            if self.calls == 3:
                raise KeyboardInterrupt  # what _StopFlag raises on the second SIGINT
            return self.f.write(data)

        def flush(self):
            self.f.flush()

    monkeypatch.setattr(torch, "save", lambda obj, f: real_save(obj, Interrupting(f)))
    with pytest.raises(KeyboardInterrupt):
        rundir.save_checkpoint(path, {"epoch": 2, "model": {"w": torch.zeros(1000)}})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_run_stopped_before_its_first_checkpoint_restarts_with_its_own_command(runner, tmp_path, monkeypatch, sig):
    out = tmp_path / "run"
    real = ARTTask.dataset

    from crnn_core.base.signals import SignalInterrupt

    def interrupted(self, split):  # the signal arrives while the data is generated
        raise SignalInterrupt(sig)

    monkeypatch.setattr(ARTTask, "dataset", interrupted)
    result = run(runner, out, "--epochs", "1")
    assert result.exit_code == 128 + sig
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith(f"Interrupted: {sig.name} received before the first checkpoint of {out}; start it again with: crnn run ")
    assert "Traceback" not in result.stderr
    monkeypatch.setattr(ARTTask, "dataset", real)
    # --resume says how to restart, and the same command again just works
    refused = resume(runner, out)
    assert_one_line_error(refused, "the run was stopped before its first checkpoint; start it again with: crnn run ")
    assert run(runner, out, "--epochs", "1").exit_code == 0
    assert [r["epoch"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())] == [1]


def test_a_run_with_a_checkpoint_still_needs_force(runner, tmp_path):
    out = tmp_path / "run"
    assert run(runner, out, "--epochs", "1").exit_code == 0
    assert_one_line_error(run(runner, out, "--epochs", "1"), "already holds a run")


# -- 4. the disk --------------------------------------------------------------------------------------
def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


def test_a_full_disk_is_a_one_line_error_and_keeps_the_last_checkpoint(runner, tmp_path):
    """RLIMIT_FSIZE makes every write past 16 KiB fail like a full disk: torch.save raises RuntimeError (inline_container)."""
    out = tmp_path / "run"
    assert run(runner, out, "--epochs", "1").exit_code == 0
    last = out / "checkpoints" / "last.pt"
    before = last.read_bytes()
    assert len(before) > 16384
    proc = subprocess.run([sys.executable, "-m", "crnn_core", "run", "--resume", str(out), "--epochs", "2", "-q"],
                          capture_output=True, text=True, env=env(), preexec_fn=_limit_file_size(16384), timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"Error: cannot write checkpoint {last}: File too large"), proc.stderr
    assert last.read_bytes() == before
    assert [p.name for p in last.parent.iterdir() if p.name.endswith(".tmp")] == []


def test_a_read_only_out_is_a_one_line_error(runner, tmp_path, monkeypatch):
    def read_only(self, *args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    result = run(runner, tmp_path / "ro" / "run", "--epochs", "1")
    assert result.exit_code == 2
    assert_one_line_error(result, f"cannot create run directory {tmp_path / 'ro' / 'run'}: Read-only file system")


def test_a_run_directory_that_became_read_only_keeps_its_checkpoint(runner, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert run(runner, out, "--epochs", "1").exit_code == 0
    before = snapshot(out)

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(rundir.tempfile, "mkstemp", read_only)
    result = resume(runner, out, "--epochs", "2")
    assert result.exit_code == 2
    assert_one_line_error(result, "Read-only file system")
    assert snapshot(out)["checkpoints/last.pt"] == before["checkpoints/last.pt"]


def _on_append(monkeypatch, at_epoch: int, action) -> None:
    """Run ``action`` just before the trainer appends epoch ``at_epoch``'s metrics record."""
    import crnn_core.rundirs.run as train_module  # the run-directory writer saves and appends

    real = train_module.append_metrics

    def append(path, record):
        if record["epoch"] == at_epoch:
            action()
        real(path, record)

    monkeypatch.setattr(train_module, "append_metrics", append)


def test_a_run_directory_deleted_mid_run_stops_the_run_and_is_not_recreated(runner, tmp_path, monkeypatch):
    import shutil

    out = tmp_path / "run"
    _on_append(monkeypatch, 2, lambda: shutil.rmtree(out))
    result = run(runner, out, "--epochs", "3")
    assert result.exit_code == 2
    assert_one_line_error(result, f"run directory {out} was deleted or replaced while this run was writing to it")
    assert not out.exists()


def test_metrics_jsonl_deleted_mid_run_is_detected_not_recreated(runner, tmp_path, monkeypatch):
    out = tmp_path / "run"
    _on_append(monkeypatch, 3, lambda: (out / "metrics.jsonl").unlink())
    result = run(runner, out, "--epochs", "4")
    assert result.exit_code == 2
    assert_one_line_error(result, f"{out / 'metrics.jsonl'} was deleted while this run was writing it (it had 2 records)")
    assert not (out / "metrics.jsonl").exists()
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 2  # the last good checkpoint
    monkeypatch.undo()
    # resuming does not silently start a history with epochs missing either
    assert_one_line_error(resume(runner, out), "metrics.jsonl is missing but")


# -- 5. a refused or empty resume changes nothing -------------------------------------------------
def test_a_refused_resume_changes_nothing(runner, tmp_path):
    out = tmp_path / "run"
    assert run(runner, out, "--epochs", "1").exit_code == 0
    last = out / "checkpoints" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    ckpt.pop("rng")
    torch.save(ckpt, last)
    before = snapshot(out)
    assert_one_line_error(resume(runner, out, "--epochs", "3"), "has a missing or invalid field")
    assert snapshot(out) == before


@pytest.mark.parametrize("epochs", [[], ["--epochs", "2"], ["--epochs", "1"]], ids=["same", "equal", "fewer"])
def test_resuming_a_finished_run_says_there_is_nothing_to_do(runner, tmp_path, epochs):
    out = tmp_path / "run"
    assert run(runner, out, "--epochs", "2").exit_code == 0
    before = snapshot(out)
    result = resume(runner, out, *epochs)
    assert result.exit_code == 0  # as before: a finished run resumed is not an error (scripts re-run it)
    given = epochs[1] if epochs else "2"
    assert result.stderr.strip().splitlines() == [
        f"crnn: nothing to do: {out} has already trained 2 of --epochs {given}; nothing was changed; "
        f"to train further: crnn run --resume {out} --epochs 3"]
    assert json.loads(result.stdout)["epochs"] == 2
    assert snapshot(out) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_writes_nothing(runner, tmp_path):
    out = tmp_path / "run"
    result = run(runner, out, "--epochs", "1", "--device", "cuda")
    assert_one_line_error(result, "PyTorch sees no CUDA device")
    assert not out.exists()
    finished = tmp_path / "finished"
    assert run(runner, finished, "--epochs", "1").exit_code == 0
    before = snapshot(finished)
    assert_one_line_error(resume(runner, finished, "--epochs", "2", "--device", "cuda"), "PyTorch sees no CUDA device")
    assert snapshot(finished) == before


# -- 3. from the first instruction: the handlers come before PyTorch is imported ------------------------
def test_the_signal_handlers_are_installed_before_pytorch_is_imported():
    code = ("import sys, signal, crnn_core, crnn_core.commandline.entry, crnn_core.base.signals as s; s.install(); "
            "print('torch' in sys.modules, signal.getsignal(signal.SIGTERM) is s._raise)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.stdout.split() == ["False", "True"], result.stderr


def test_an_interruption_while_pytorch_imports_is_one_line(monkeypatch, capsys):
    from crnn_core.base import signals
    from crnn_core.commandline import entry

    def interrupted():
        raise signals.SignalInterrupt(signal.SIGTERM)

    monkeypatch.setattr(entry, "_import_cli", interrupted)
    monkeypatch.setattr(signals, "install", lambda: None)  # leave the test process's handlers alone
    signals.note_run_dir(None)
    with pytest.raises(SystemExit) as stopped:
        entry.main()
    assert stopped.value.code == 143
    assert capsys.readouterr().err == "Interrupted: SIGTERM received during start-up; nothing was written\n"


def test_a_swallowed_start_up_signal_still_stops_the_run_before_it_writes(runner, tmp_path, monkeypatch):
    """A library's bare `except:` may swallow the SignalInterrupt; the run still stops before its first byte."""
    from crnn_core.base import signals

    monkeypatch.setattr(signals, "_RECEIVED", int(signal.SIGTERM))  # received, its exception swallowed
    out = tmp_path / "run"
    result = run(runner, out, "--epochs", "1")
    assert result.exit_code == 143
    assert result.stderr.strip().splitlines() == ["Interrupted: SIGTERM received during start-up; nothing was written"]
    assert not out.exists()


def test_a_signal_after_the_command_ended_does_not_change_its_exit_status():
    """Python restores the default handlers while it shuts down; crnn ignores signals once the command is over."""
    code = ("import os, signal, sys; from crnn_core.base import signals; signals.install(); signals.finish(); "
            "os.kill(os.getpid(), signal.SIGTERM); os.kill(os.getpid(), signal.SIGINT); sys.exit(0)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert (result.returncode, result.stderr) == (0, "")


# -- the first-checkpoint window: a kill at each write point ------------------------------------------
#: A `crnn run` that dies (``os._exit``, as by kill -9) at one write point of one epoch's end:
#: ``metrics`` after the metrics.jsonl record was appended, ``last-write`` halfway through
#: last.pt's temporary file, ``last-rename`` just before that file is renamed to last.pt,
#: ``best-write`` as best.pt's write starts, ``best-rename`` before best.pt's rename.
FAULT_DRIVER = """
import os, sys
from crnn_core import run, rundir
point, epoch = sys.argv[1], int(sys.argv[2])
writes = {"last.pt": 0, "best.pt": 0}
real_append, real_atomic, real_replace = run.append_metrics, rundir.atomic_write_bytes, os.replace

def append_metrics(path, record):
    real_append(path, record)
    if point == "metrics" and record["epoch"] == epoch:
        os._exit(137)

def atomic_write_bytes(path, write):
    name = os.path.basename(path)
    if name in writes:
        writes[name] += 1
    due = writes.get(name) == epoch
    if due and point == f"{name[:4]}-write" and name == "best.pt":
        os._exit(137)
    if due and point == "last-write":
        def half(f):
            import io
            buffer = io.BytesIO()
            write(buffer)
            f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
            f.flush()
            os._exit(137)
        return real_atomic(path, half)
    return real_atomic(path, write)

def replace(src, dst, *args, **kwargs):
    name = os.path.basename(dst)
    if writes.get(name) == epoch and point == f"{name[:4]}-rename":
        os._exit(137)
    return real_replace(src, dst, *args, **kwargs)

run.append_metrics, rundir.atomic_write_bytes, os.replace = append_metrics, atomic_write_bytes, replace
from crnn_core.commandline.main import main
sys.argv = ["crnn", *sys.argv[3:]]
main()
"""


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> Path:
    from click.testing import CliRunner

    out = tmp_path_factory.mktemp("reference") / "run"
    assert invoke(CliRunner(), ["run", *ARGS, "--epochs", "3", "--out", str(out)]).exit_code == 0
    return out


@pytest.mark.parametrize("point, epoch", [("metrics", 1), ("last-write", 1), ("last-rename", 1),
                                          ("best-write", 1), ("best-rename", 1), ("metrics", 2)])
def test_a_kill_at_each_write_point_is_recovered_by_resume(runner, tmp_path, uninterrupted, point, epoch):
    """Killed at any write of an epoch's end, the first epoch's included (metrics written, no
    checkpoint yet: --resume refused it, the run's own command too), the run is finished by
    `crnn run --resume DIR`, with the uninterrupted run's metrics and best.pt weights."""
    out = tmp_path / "run"
    killed = subprocess.run([sys.executable, "-c", FAULT_DRIVER, point, str(epoch), "run", *ARGS, "--epochs", "3",
                             "--out", str(out)], capture_output=True, text=True, env=env(), timeout=600)
    assert killed.returncode == 137, killed.stderr
    records = [r["epoch"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
    assert records == list(range(1, epoch + 1))  # each epoch's record is written before its checkpoints
    resumed = resume(runner, out)
    assert resumed.exit_code == 0, resumed.stderr
    restarted = epoch == 1 and point in ("metrics", "last-write", "last-rename")
    assert ("the run starts again from its first step" in resumed.stderr) == restarted
    assert metrics_without_wall_time(out / "metrics.jsonl") == metrics_without_wall_time(uninterrupted / "metrics.jsonl")
    best, reference = (load_checkpoint(p / "checkpoints" / "best.pt") for p in (out, uninterrupted))
    assert best["epoch"] == reference["epoch"] and best["best"] == reference["best"]
    assert all(torch.equal(best["model"][k], v) for k, v in reference["model"].items())
    assert not list((out / "checkpoints").glob(".*.tmp"))
