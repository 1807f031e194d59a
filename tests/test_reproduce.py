"""`crnn reproduce`: a tiny ART grid runs in parallel jobs, resumes, and writes its figures and table;
a signal stops the whole grid (no run starts afterwards) and --resume continues the recorded grid."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from crnn_core.rundirs.rundir import wait_until_unlocked

from .conftest import assert_one_line_error, invoke

TINY = ["--set", "task.train_size=256", "--set", "task.val_size=128", "--set", "cell.backend=reference",
        "--set", "train.batch_size=64"]


def test_art_grid_runs_resumes_and_reports(runner, tmp_path):
    out = tmp_path / "grid"
    args = ["reproduce", "art", "--seeds", "1", "--inits", "zero,learned", "--jobs", "2", "--out", str(out), *TINY]
    result = invoke(runner, [*args, "--epochs", "1"])
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert sorted(p.rsplit("/", 1)[1] for p in summary["figures"]) == ["art_val_accuracy.png", "art_val_error_rate.png",
                                                                       "art_val_nll.png"]
    for path in summary["figures"]:
        assert open(path, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    table = (out / "results.md").read_text()
    assert "| zero | 1 |" in table and "| learned | 1 |" in table and "epochs to 100%" in table
    config = json.loads((out / "learned_s0" / "config.json").read_text())
    assert config["model"]["cell"] == "fastweights" and config["model"]["cell_options"]["hidden_size"] == 50

    # the same grid again: nothing to do
    again = invoke(runner, [*args, "--epochs", "1"])
    assert "2 of 2 runs already finished" in again.stderr
    # more epochs: the runs are resumed from last.pt, not restarted
    longer = invoke(runner, [*args, "--epochs", "2"])
    assert longer.exit_code == 0, longer.stderr
    lines = (out / "zero_s0" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]
    assert "--resume" in (out / "zero_s0" / "command.txt").read_text()


def test_reproduce_bad_input(runner, tmp_path):
    assert_one_line_error(invoke(runner, ["reproduce", "art", "--inits", "zero,nope", "--out", str(tmp_path)]),
                          "'nope' is not an arm of art")
    assert_one_line_error(invoke(runner, ["reproduce", "art", "--seeds", "0", "--out", str(tmp_path)]), "must be positive")
    assert_one_line_error(invoke(runner, ["reproduce", "art", "--report-only", "--out", str(tmp_path / "empty")]),
                          "no finished epochs")


def test_resume_continues_the_recorded_seeds_epochs_and_inits(runner, tmp_path):
    out = tmp_path / "grid"
    first = invoke(runner, ["reproduce", "art", "--seeds", "2", "--inits", "zero", "--epochs", "1", "--out", str(out), *TINY])
    assert first.exit_code == 0, first.stderr
    recorded = json.loads((out / "grid.json").read_text())
    assert (recorded["seeds"], recorded["epochs"], recorded["inits"]) == (2, 1, ["zero"])
    resumed = invoke(runner, ["reproduce", "art", "--out", str(out), "--resume"])
    assert resumed.exit_code == 0, resumed.stderr
    assert "2 of 2 runs already finished; 0 to go" in resumed.stderr  # not the defaults: 3 seeds x 3 inits, 200 epochs
    (out / "grid.json").write_text(json.dumps({k: v for k, v in recorded.items() if k not in ("seeds", "epochs", "inits")}))
    report = invoke(runner, ["reproduce", "art", "--out", str(out), "--report-only"])  # a grid.json without its shape:
    assert report.exit_code == 0, report.stderr  # the seeds on disk are reported, not the default 3
    assert "| zero | 2 |" in json.loads(report.stdout)["markdown"]


def start_grid(out, jobs: int) -> subprocess.Popen:
    """A grid of 3 long runs (1000 epochs of 4 steps), in its own session like a shell's foreground job."""
    args = ["reproduce", "art", "--seeds", "3", "--inits", "zero", "--epochs", "1000", "--jobs", str(jobs),
            "--out", str(out), *TINY]
    return subprocess.Popen([sys.executable, "-m", "crnn_core", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env=dict(os.environ, CRNN_NO_PLUGINS="1"))


@pytest.mark.parametrize("sig, to_group, code", [(signal.SIGTERM, False, 143), (signal.SIGINT, True, 130)],
                         ids=["sigterm-to-the-parent", "ctrl-c-to-the-job"])
def test_a_signal_stops_the_whole_grid(tmp_path, sig, to_group, code):
    out = tmp_path / "grid"
    proc = start_grid(out, jobs=1)
    last = out / "zero_s0" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 120
    while not last.is_file():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the first grid run saved no checkpoint in time"
        time.sleep(0.05)
    if to_group:
        os.killpg(proc.pid, sig)  # a terminal's Ctrl-C reaches the whole job: the parent passes it on once
    else:
        proc.send_signal(sig)
    try:
        _, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        pytest.fail("crnn reproduce went on after the signal")
    assert proc.returncode == code, stderr
    lines = stderr.strip().splitlines()
    assert lines[-1].startswith(f"Interrupted: {signal.Signals(sig).name} received: stopped the grid; 1 running run(s)")
    assert "2 not started" in lines[-1] and f"crnn reproduce art --out {out} --resume" in lines[-1]
    assert "Traceback" not in stderr
    assert not (out / "zero_s1").exists() and not (out / "zero_s2").exists()  # nothing started after the signal
    assert wait_until_unlocked(out / "zero_s0", 0)  # the child has exited and released its run directory
    command = (out / "zero_s0" / "command.txt").read_text()
    assert "--resume" not in command  # it saved and stopped once: not aborted by a second signal
    assert json.loads((out / "grid.json").read_text())["seeds"] == 3


def test_a_failed_run_stops_the_grid_with_its_error(runner, tmp_path):
    out = tmp_path / "grid"
    result = invoke(runner, ["reproduce", "art", "--seeds", "3", "--inits", "zero", "--epochs", "1", "--out", str(out),
                             *TINY, "--set", "cell.inner_steps=5000"])  # out of its range: each run refuses
    assert_one_line_error(result, "grid run")
    assert "failed (exit 2)" in result.stderr
    assert not (out / "zero_s1").exists()  # the grid stopped at the first failure
