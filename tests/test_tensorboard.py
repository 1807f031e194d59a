"""`crnn run --log tensorboard`: the event files read back (tensorboard's EventAccumulator) hold the
values of metrics.jsonl, the config as hparams, LCD sample figures; a run killed past its checkpoint
and resumed has every step once, with the values of the run left alone."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from crnn_core.training.loggers import TENSORBOARD_DIR, TensorBoardLogger, flat_hparams

from .conftest import assert_one_line_error, invoke, keep_thread_count, metrics_without_wall_time

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

pytestmark = pytest.mark.usefixtures("thread_count_kept")

#: 8 steps per epoch (128 / 16), so a kill lands mid-epoch; one thread for identical numbers in every run.
ART = ["run", "--cell", "lstm", "--init", "learned", "--task", "art", "--epochs", "3", "--seed", "2", "-q",
       "--set", "task.train_size=128", "--set", "task.val_size=64", "--batch-size", "16", "--set", "train.threads=1"]
STEPS_PER_EPOCH = 8
LCD = ["run", "--cell", "lstm", "--init", "learned", "--task", "lcd", "--epochs", "2", "-q", "--set", "init.distribution=normal",
       "--set", "task.train_per_period=4", "--set", "task.val_per_period=2", "--set", "task.length=8",
       "--set", "train.threads=1", "--set", "train.figure_every=1"]


def events(run_dir: Path) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir / TENSORBOARD_DIR), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def scalars(acc: EventAccumulator) -> dict[str, list[tuple[int, float]]]:
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def f32(x: float) -> float:
    """``x`` as TensorBoard stores it (float32)."""
    import numpy as np

    return float(np.float32(x))


def test_event_files_hold_the_values_of_metrics_jsonl_and_the_config_as_hparams(runner, tmp_path):
    out = tmp_path / "run"
    result = invoke(runner, [*ART, "--out", str(out), "--log", "tensorboard"])
    assert result.exit_code == 0, result.stderr
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    config = json.loads((out / "config.json").read_text())
    assert config["train"]["loggers"] == "tensorboard"
    curves = scalars(events(out))

    assert curves["val/loss"] == [(r["step"], f32(r["loss"])) for r in records]
    for name in records[0]["metrics"]:
        assert curves[f"val/{name}"] == [(r["step"], f32(r["metrics"][name])) for r in records]
    assert curves["train/epoch_loss"] == [(r["step"], f32(r["train_loss"])) for r in records]
    assert curves["train/lr"] == [(r["step"], f32(config["train"]["lr"])) for r in records]
    steps = curves["train/loss"]
    assert [s for s, _ in steps] == list(range(1, 3 * STEPS_PER_EPOCH + 1))
    for r in records:  # equal batches: the epoch's training loss is the mean of its steps' losses
        epoch = [v for s, v in steps if r["step"] - STEPS_PER_EPOCH < s <= r["step"]]
        assert math.isclose(sum(epoch) / len(epoch), r["train_loss"], rel_tol=1e-5)

    content = events(out).PluginTagToContent("hparams")["_hparams_/session_start_info"]
    shown = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info.hparams
    flat = flat_hparams(config)
    assert set(shown) == set(flat)
    for name, value in flat.items():
        got = shown[name]
        assert (got.string_value if isinstance(value, str) else got.bool_value if isinstance(value, bool)
                else got.number_value) == value, name


def test_a_run_killed_past_its_checkpoint_and_resumed_has_each_step_once(runner, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    assert invoke(runner, [*ART, "--out", str(reference), "--log", "tensorboard"]).exit_code == 0
    expected = scalars(events(reference))

    kill_at = STEPS_PER_EPOCH + 3  # mid epoch 2: last.pt is epoch 1's, the event file goes 3 steps further
    step_end = TensorBoardLogger.on_step_end

    def killed(self, loop):
        step_end(self, loop)
        if loop.state.step == kill_at:
            self.writer.flush()  # the worst case of a kill -9: every event written, no checkpoint after epoch 1
            raise KeyboardInterrupt

    out = tmp_path / "run"
    with keep_thread_count():
        monkeypatch.setattr(TensorBoardLogger, "on_step_end", killed)
        assert invoke(runner, [*ART, "--out", str(out), "--log", "tensorboard"]).exit_code == 130
        monkeypatch.undo()
    first = scalars(events(out))
    assert first["train/loss"][-1][0] == kill_at and len(first["val/loss"]) == 1
    resumed = invoke(runner, ["run", "--resume", str(out), "-q"])  # the logger is in config.json: no --log needed
    assert resumed.exit_code == 0, resumed.stderr

    assert len(list((out / TENSORBOARD_DIR).iterdir())) == 2  # one event file per attempt
    assert scalars(events(out)) == expected  # no step twice, every value the uninterrupted run's
    assert metrics_without_wall_time(out / "metrics.jsonl") == metrics_without_wall_time(reference / "metrics.jsonl")


def test_lcd_sample_figures_every_n_epochs_leave_the_run_unchanged(runner, tmp_path):
    plain, logged = tmp_path / "plain", tmp_path / "logged"
    assert invoke(runner, [*LCD, "--out", str(plain)]).exit_code == 0
    assert not (plain / TENSORBOARD_DIR).exists()  # no logger asked for, none written
    result = invoke(runner, [*LCD, "--out", str(logged), "--log", "tensorboard"])
    assert result.exit_code == 0, result.stderr
    acc = events(logged)
    assert sorted(acc.Tags()["images"]) == ["samples/0", "samples/1"]
    for tag in acc.Tags()["images"]:
        images = acc.Images(tag)
        assert [i.step for i in images] == [r["step"] for r in map(json.loads, (logged / "metrics.jsonl").read_text().splitlines())]
        assert images[0].encoded_image_string[:8] == b"\x89PNG\r\n\x1a\n" and images[0].width > 100
    # drawing samples uses its own random stream: the run's numbers are those of the run without the logger
    assert metrics_without_wall_time(logged / "metrics.jsonl") == metrics_without_wall_time(plain / "metrics.jsonl")


def test_bad_logger_options_are_one_line_errors(runner, tmp_path):
    assert_one_line_error(invoke(runner, [*ART, "--out", str(tmp_path / "a"), "--set", "train.loggers=wandb"]),
                          "unknown logger 'wandb'")
    assert_one_line_error(invoke(runner, [*ART, "--out", str(tmp_path / "b"), "--set", "train.figure_every=-1"]),
                          "figure_every must be 0")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_a_missing_tensorboard_package_names_the_extra_before_writing(runner, tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "tensorboard", None)  # `import tensorboard` raises ImportError
    result = invoke(runner, [*ART, "--out", str(tmp_path / "run"), "--log", "tensorboard"])
    assert_one_line_error(result, "pip install 'tensorboard>=2.10' (crnn's [tensorboard] extra)")
    assert result.exit_code == 2 and not (tmp_path / "run").exists()


def test_the_python_api_takes_the_logger_as_a_callback(tmp_path):
    from crnn_core import ModelSpec, TrainConfig, build_model, fit, get_plugins

    spec = ModelSpec(cell="lstm", init="zero", task="art", task_options={"train_size": 64, "val_size": 32})
    built = build_model(spec, get_plugins())
    with keep_thread_count():
        summary = fit(built.model, built.task, TrainConfig(epochs=2, batch_size=32, threads=1),
                      callbacks=[TensorBoardLogger(tmp_path / "tb")])
    acc = EventAccumulator(str(tmp_path / "tb"))
    acc.Reload()
    assert [e.step for e in acc.Scalars("val/loss")] == [2, 4] and summary["steps"] == 4
    assert acc.Scalars("val/loss")[-1].value == f32(summary["final"]["loss"])


def test_log_may_be_added_when_resuming_and_is_recorded(runner, tmp_path):
    out = tmp_path / "run"
    args = [arg if arg != "3" else "1" for arg in ART]  # one epoch first
    assert invoke(runner, [*args, "--out", str(out)]).exit_code == 0
    result = invoke(runner, ["run", "--resume", str(out), "--epochs", "2", "--log", "tensorboard", "-q"])
    assert result.exit_code == 0, result.stderr
    assert json.loads((out / "config.json").read_text())["train"]["loggers"] == "tensorboard"
    curves = scalars(events(out))
    assert [s for s, _ in curves["val/loss"]] == [2 * STEPS_PER_EPOCH]  # the curves start at the checkpoint
    assert [s for s, _ in curves["train/loss"]] == list(range(STEPS_PER_EPOCH + 1, 2 * STEPS_PER_EPOCH + 1))
