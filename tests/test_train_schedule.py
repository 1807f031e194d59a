"""Training options: step lr decay, fresh ART data per epoch, training-set metrics.

Each must keep ``--resume`` exact: a run stopped at (or inside) an epoch past the decay and
resumed writes the same metrics.jsonl (except wall_time) as the run left alone.
"""

from __future__ import annotations

import json
import signal

import pytest
import torch

from crnn_core import ConfigError
from crnn_core.interfaces.options import build_options
from crnn_core.training.train import TrainConfig
from crnn_plugins.tasks.art import ARTOptions, ARTTask

from .conftest import assert_one_line_error, invoke, keep_thread_count, metrics_without_wall_time
from .test_interrupt import start, wait_for_first_epoch

pytestmark = pytest.mark.usefixtures("thread_count_kept")

BASE = ["--cell", "fastweights", "--init", "learned", "--task", "art", "--seed", "3", "-q",
        "--set", "task.train_size=256", "--set", "task.val_size=128", "--batch-size", "16",
        "--set", "cell.backend=reference", "--set", "train.threads=1"]
STUDY = ["--set", "train.lr_decay_at=1,3", "--set", "train.lr_decay_factor=0.5",
         "--set", "task.resample_train=true", "--set", "train.report_train_metrics=true"]


def run(runner, out, *args):
    with keep_thread_count():
        result = invoke(runner, ["run", *BASE, *args, "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    return metrics_without_wall_time(out / "metrics.jsonl")


def test_lr_schedule_is_a_function_of_the_epoch():
    cfg = build_options(TrainConfig, {"lr": "0.01", "lr_decay_at": "2, 5", "lr_decay_factor": "0.1"}, "train")
    assert cfg.decay_epochs == (2, 5)
    assert [round(cfg.lr_at(e), 12) for e in range(7)] == [0.01, 0.01, 0.001, 0.001, 0.001, 0.0001, 0.0001]
    assert build_options(TrainConfig, {}, "train").lr_at(100) == 1e-3
    for bad, match in [("3,2", "increasing positive epochs"), ("0", "increasing positive epochs"),
                       ("a,b", "comma-separated epoch numbers")]:
        with pytest.raises(ConfigError, match=match):
            build_options(TrainConfig, {"lr_decay_at": bad}, "train")
    with pytest.raises(ConfigError, match="lr_decay_factor must be in"):
        build_options(TrainConfig, {"lr_decay_factor": "0"}, "train")


def test_resample_train_is_deterministic_per_epoch_and_never_the_validation_set():
    task = ARTTask(ARTOptions(train_size=64, val_size=64, resample_train=True, data_seed=5))
    assert task.epoch_train_data(0) is None  # epoch 0 trains on dataset("train")
    e1, e1_again, e2 = task.epoch_train_data(1), task.epoch_train_data(1), task.epoch_train_data(2)
    assert torch.equal(e1["tokens"], e1_again["tokens"])
    for other in (e2, task.dataset("train"), task.dataset("val")):
        assert not torch.equal(e1["tokens"], other["tokens"])
    assert ARTTask(ARTOptions(train_size=64)).epoch_train_data(3) is None


def test_decay_resample_and_train_metrics_resume_exactly_across_the_decay(runner, tmp_path):
    alone = run(runner, tmp_path / "alone", "--epochs", "4", *STUDY)
    assert [r["lr"] for r in alone] == [1e-3, 5e-4, 5e-4, 2.5e-4]
    assert all(set(r["train_metrics"]) == {"loss", "nll", "accuracy"} for r in alone)
    # the options change the run (so the comparison below could fail)
    plain = run(runner, tmp_path / "plain", "--epochs", "4")
    assert [r["metrics"] for r in plain] != [r["metrics"] for r in alone]
    assert "lr" not in plain[0] and "train_metrics" not in plain[0]

    out = tmp_path / "pieces"
    run(runner, out, "--epochs", "1", *STUDY)  # stops exactly at the first decay
    for epochs in ("3", "4"):
        with keep_thread_count():
            result = invoke(runner, ["run", "--resume", str(out), "--epochs", epochs, "-q"])
        assert result.exit_code == 0, result.stderr
    assert metrics_without_wall_time(out / "metrics.jsonl") == alone


def test_signal_mid_epoch_after_the_decay_resumes_exactly(runner, tmp_path, monkeypatch):
    import tests.test_interrupt as ti

    args = [*BASE, "--epochs", "3", *STUDY]
    alone = run(runner, tmp_path / "alone", "--epochs", "3", *STUDY)
    monkeypatch.setattr(ti, "ARGS", args)
    out = tmp_path / "run"
    proc = start(out)
    wait_for_first_epoch(proc, out)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    with keep_thread_count():
        result = invoke(runner, ["run", "--resume", str(out), "-q"])
    assert result.exit_code == 0, result.stderr
    assert metrics_without_wall_time(out / "metrics.jsonl") == alone


def test_the_schedule_is_part_of_the_checkpoint_identity(runner, tmp_path):
    """A config.json whose schedule was edited after the checkpoint was written is refused on --resume."""
    out = tmp_path / "run"
    run(runner, out, "--epochs", "1", "--set", "train.lr_decay_at=2")
    config = json.loads((out / "config.json").read_text())
    config["train"]["lr_decay_at"] = "3"
    (out / "config.json").write_text(json.dumps(config))
    with keep_thread_count():
        result = invoke(runner, ["run", "--resume", str(out), "--epochs", "2"])
    assert_one_line_error(result, "was written by a different configuration")


def test_a_run_from_before_the_new_options_still_resumes(runner, tmp_path):
    """config.json and last.pt without the options added later (at their defaults): --resume works;
    a non-default value of such an option in config.json is still refused."""
    from crnn_core.rundirs.rundir import load_checkpoint

    out = tmp_path / "old"
    run(runner, out, "--epochs", "1")
    added = {"train": ("lr_decay_at", "lr_decay_factor", "report_train_metrics"),
             "cell_options": ("a_update", "ln_eps"), "task_options": ("key_letters", "resample_train")}
    config = json.loads((out / "config.json").read_text())
    ckpt_path = out / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(ckpt_path)
    for section, names in added.items():
        for doc in (config, ckpt["config"]):
            part = doc["train"] if section == "train" else doc["model"][section]
            for name in names:
                del part[name]
    (out / "config.json").write_text(json.dumps(config))
    torch.save(ckpt, ckpt_path)
    with keep_thread_count():
        result = invoke(runner, ["run", "--resume", str(out), "--epochs", "2", "-q"])
    assert result.exit_code == 0, result.stderr
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 2

    config["model"]["cell_options"]["a_update"] = "preliminary"  # not the default: the checkpoint did not use it
    (out / "config.json").write_text(json.dumps(config))
    with keep_thread_count():
        result = invoke(runner, ["run", "--resume", str(out), "--epochs", "3"])
    assert_one_line_error(result, "was written by a different configuration")
