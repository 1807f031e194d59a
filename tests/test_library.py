"""crnn as a library: the FastWeights layer, ContextualRNN around any recurrent module,
fit() with callbacks, a core that knows no plugin, one declaration of the component kinds,
refused task declarations and one reading of boolean environment variables."""

from __future__ import annotations

import dataclasses
import json
import re
import subprocess
from pathlib import Path

import pytest
import torch
from torch import nn

import crnn_core
from crnn_core import (
    Callback,
    ConfigError,
    ContextualRNN,
    FastWeights,
    Interrupted,
    ModelSpec,
    Task,
    TrainConfig,
    build_model,
    env_flag,
    fit,
    hookimpl,
)
from crnn_core.plugin_manager import hookspecs
from crnn_core.interfaces.kinds import KINDS, SCOPES
from crnn_plugins.tasks.art import ARTTask
from crnn_plugins.cells.fastweights import FastWeightsCell, FastWeightsOptions

from .conftest import TINY_ART, assert_one_line_error, invoke

ROOT = Path(__file__).resolve().parent.parent
TINY_ART_OPTIONS = {"train_size": 128, "val_size": 64, "embedding_size": 8, "head_hidden": 8}

pytestmark = pytest.mark.usefixtures("thread_count_kept")


# -- 1. the FastWeights layer ----------------------------------------------------------------------
def test_fastweights_layer_is_used_like_nn_lstm():
    torch.manual_seed(0)
    layer = FastWeights(5, 8, lam=0.9, eta=0.4, inner_steps=2, activation="tanh")
    x = torch.randn(3, 6, 5)
    outputs, state = layer(x)
    assert outputs.shape == (3, 6, 8) and state["h"].shape == (3, 8) and state["A"].shape == (3, 8, 8)
    zeros = {"h": torch.zeros(3, 8), "A": torch.zeros(3, 8, 8)}
    torch.testing.assert_close(layer(x, zeros)[0], outputs)  # the default state is zeros
    # continuing from the returned state equals unrolling the whole sequence at once
    first, mid = layer(x[:, :4])
    rest, _ = layer(x[:, 4:], mid)
    torch.testing.assert_close(torch.cat([first, rest], dim=1), outputs, rtol=1e-5, atol=1e-5)
    # batch_first=False takes and gives [T, B, *]
    time_major = FastWeights(5, 8, lam=0.9, eta=0.4, inner_steps=2, activation="tanh", batch_first=False)
    time_major.load_state_dict(layer.state_dict())
    torch.testing.assert_close(time_major(x.transpose(0, 1))[0].transpose(0, 1), outputs)
    # the CLI's cell is the same layer (same parameter names, same outputs)
    cell = FastWeightsCell(5, FastWeightsOptions(hidden_size=8, lam=0.9, eta=0.4, inner_steps=2, activation="tanh"))
    cell.load_state_dict(layer.state_dict())
    torch.testing.assert_close(cell(x, zeros)[0], outputs)
    assert isinstance(cell, crnn_core.Cell)


@pytest.mark.parametrize("kwargs,argument", [
    ({"lam": 1.5}, "lam"), ({"inner_steps": 0}, "inner_steps"), ({"activation": "gelu"}, "activation"),
    ({"backend": "cuda"}, "backend"), ({"hidden_size": 0}, "hidden_size"),
    # found by trying the API as a new user: these were accepted (1.5 silently became 1)
    ({"inner_steps": 1.5}, "inner_steps"), ({"inner_steps": True}, "inner_steps"), ({"eta": -1.0}, "eta"),
    ({"eta": float("nan")}, "eta"), ({"batch_first": "no"}, "batch_first"), ({"hidden_size": "5"}, "hidden_size"),
])
def test_fastweights_layer_errors_name_the_argument(kwargs, argument):
    args = {"input_size": 4, "hidden_size": 8, **kwargs}
    with pytest.raises(ValueError, match=rf"^FastWeights: {argument} "):
        FastWeights(**args)


def test_crnn_core_exports_the_layers_of_installed_plugins():
    import crnn_plugins

    assert crnn_core.FastWeights is crnn_plugins.FastWeights
    assert crnn_core.fastweights_unroll is crnn_plugins.fastweights_unroll
    assert {"FastWeights", "fastweights_unroll", "ContextualRNN", "fit", "load_run"} <= set(crnn_core.__all__)
    for name in crnn_core.__all__:
        assert getattr(crnn_core, name).__doc__, f"crnn_core.{name} has no docstring"
    with pytest.raises(AttributeError):
        crnn_core.NoSuchLayer  # noqa: B018


@pytest.mark.parametrize("call,error,message", [
    (lambda l, x: l(x[0]), ValueError, r"x must be a 3-d tensor with 3 features"),
    (lambda l, x: l(x.long()), TypeError, r"x must be a floating-point tensor"),
    (lambda l, x: l(x[:, :0]), ValueError, r"x has no time steps"),
    (lambda l, x: l(x, {"h": torch.zeros(4, 5)}), TypeError, r"state must be a dict with keys 'h' and 'A'"),
    (lambda l, x: l(x, (torch.zeros(4, 5), torch.zeros(4, 5, 5))), TypeError, r"state must be a dict"),
    (lambda l, x: l(x, {"h": torch.zeros(3, 5), "A": torch.zeros(4, 5, 5)}), ValueError,
     r"state\['h'\] must have shape \[4, 5\] \(batch 4\), got \(3, 5\)"),
])
@pytest.mark.parametrize("backend", ["reference", "auto"])
def test_fastweights_forward_errors_name_the_argument(call, error, message, backend):
    """The same Python exception on every backend (the fused op's C++ checks came first before)."""
    layer = FastWeights(3, 5, backend=backend)
    with pytest.raises(error, match=f"^FastWeights: {message}"):
        call(layer, torch.randn(4, 7, 3))


# -- 2. ContextualRNN ----------------------------------------------------------------------------
@pytest.mark.parametrize("make,keys", [
    (lambda: nn.GRU(6, 10, batch_first=True), {"h": (10,)}),
    (lambda: nn.LSTM(6, 10, batch_first=True), {"h": (10,), "c": (10,)}),
    (lambda: nn.LSTM(6, 10, num_layers=2, bidirectional=True, batch_first=True), {"h": (4, 10), "c": (4, 10)}),
    (lambda: FastWeights(6, 10), {"h": (10,), "A": (10, 10)}),
])
def test_contextual_rnn_wraps_torch_modules_and_crnn_layers(make, keys):
    torch.manual_seed(0)
    rnn = ContextualRNN(make(), init="learned", context_size=3, init_options={"distribution": "normal"})
    assert rnn.cell.state_spec() == keys
    x, context = torch.randn(4, 5, 6), torch.randn(4, 3)
    outputs, state = rnn(x, context=context)
    assert outputs.shape == (4, 5, rnn.hidden_size) and {k: tuple(v.shape[1:]) for k, v in state.items()} == keys
    outputs.sum().backward()
    assert all(p.grad is not None for p in rnn.init.parameters())  # the initial state is learned
    rnn.eval()
    assert torch.equal(rnn(x, context=context)[0], rnn(x, context=context, sample=False)[0])  # eval: the mean
    assert not torch.equal(rnn(x, context=context, sample=True)[0], rnn(x, context=context, sample=True)[0])


def test_contextual_rnn_inits_and_errors():
    gru = nn.GRU(6, 10, batch_first=True)
    free = ContextualRNN(gru, init="free")
    assert set(dict(free.named_parameters())) >= {"init.values.h", "cell.module.weight_ih_l0"}
    assert torch.count_nonzero(ContextualRNN(gru)(torch.randn(2, 3, 6))[1]["h"]) > 0  # zero h0, then a GRU step
    with pytest.raises(ValueError, match="context_size"):
        ContextualRNN(gru, init="learned")
    with pytest.raises(ValueError, match="batch_first"):
        ContextualRNN(nn.GRU(6, 10))
    with pytest.raises(TypeError, match="module must be"):
        ContextualRNN(nn.Linear(6, 10))
    with pytest.raises(ConfigError, match="Did you mean 'learned'"):
        ContextualRNN(gru, init="learnd")
    rnn = ContextualRNN(gru, init="learned", context_size=3)
    with pytest.raises(ValueError, match="needs context"):
        rnn(torch.randn(2, 3, 6))
    # found by trying the API as a new user: these failed inside PyTorch with shape errors, or passed
    x = torch.randn(2, 3, 6)
    with pytest.raises(ValueError, match=r"context must be \[B, 3\] \(context_size\), got \(2, 4\)"):
        rnn(x, context=torch.randn(2, 4))
    with pytest.raises(ValueError, match=r"context must be \[B, context_size\] with B = 2, got \(5, 3\)"):
        rnn(x, context=torch.randn(5, 3))
    with pytest.raises(ValueError, match=r"x must be a 3-d tensor"):
        rnn(x[0], context=torch.randn(2, 3))
    with pytest.raises(TypeError, match=r"state must be a dict with keys 'h' \(as forward returns it\), got \[\]"):
        rnn(x, state={})
    with pytest.raises(ValueError, match=r"state\['h'\] must have shape \[2, 10\]"):
        rnn(x, state={"h": torch.zeros(3, 10)})
    with pytest.raises(TypeError, match="sample must be True, False or None"):
        rnn(x, context=torch.randn(2, 3), sample="yes")
    with pytest.raises(ValueError, match="context_size must be a positive int"):
        ContextualRNN(gru, init="learned", context_size=0)
    with pytest.raises(ValueError, match=r"batch_first=True .* FastWeights\(batch_first=False\)"):
        ContextualRNN(FastWeights(6, 10, batch_first=False))


def test_checkpoints_from_before_the_rnn_wrapper_still_load(fresh_plugins):
    built = build_model(ModelSpec("lstm", "learned", "art", cell_options={"hidden_size": 8}, task_options=TINY_ART_OPTIONS),
                        fresh_plugins)
    legacy = {re.sub(r"^rnn\.", "", k): v for k, v in built.model.state_dict().items()}
    assert "cell.lstm.weight_ih_l0" in legacy
    fresh = build_model(ModelSpec("lstm", "learned", "art", cell_options={"hidden_size": 8}, task_options=TINY_ART_OPTIONS),
                        fresh_plugins)
    fresh.model.load_state_dict(legacy)
    assert all(torch.equal(a, b) for a, b in zip(fresh.model.state_dict().values(), built.model.state_dict().values()))


# -- 3. fit ---------------------------------------------------------------------------------------
class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[str] = []

    def on_fit_start(self, loop):
        self.events.append("start")

    def on_epoch_start(self, loop, steps):
        self.events.append(f"epoch {loop.state.epoch + 1}: {steps} steps")

    def on_epoch_end(self, loop, record, improved):
        self.events.append(f"end {record['epoch']} step {loop.state.step} improved {improved}")


def test_a_callback_stops_fit_cleanly_or_interrupts_it(fresh_plugins):
    """The documented ways to stop from a callback (docs/python-api.md); a stop_signal
    that is not a signal number (True, a string) is a TypeError naming both ways."""
    import signal

    built = build_model(ModelSpec("lstm", "zero", "art", cell_options={"hidden_size": 8}, task_options=TINY_ART_OPTIONS),
                        fresh_plugins)

    class AfterOneEpoch(Callback):
        def on_epoch_end(self, loop, record, improved):
            loop.stopped_early = True

    summary = fit(built.model, built.task, TrainConfig(epochs=3, batch_size=64), callbacks=[AfterOneEpoch()])
    assert summary["epochs"] == 1 and summary["stopped_early"] is True

    class Signal(Callback):
        def __init__(self, value):
            self.value = value

        def on_step_end(self, loop):
            loop.stop_signal = self.value

        def on_stop(self, loop):
            return "my note"

    with pytest.raises(Interrupted, match="SIGTERM received: my note"):
        fit(built.model, built.task, TrainConfig(epochs=1, batch_size=64), callbacks=[Signal(signal.SIGTERM)])
    for bad in (True, "early", 12345):
        with pytest.raises(TypeError, match="loop.stop_signal must be a signal number .* loop.stopped_early = True"):
            fit(built.model, built.task, TrainConfig(epochs=1, batch_size=64), callbacks=[Signal(bad)])


def test_fit_trains_in_memory_with_callbacks_and_writes_nothing(fresh_plugins, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    built = build_model(ModelSpec("lstm", "zero", "art", cell_options={"hidden_size": 8}, task_options=TINY_ART_OPTIONS),
                        fresh_plugins)
    recorder = Recorder()
    summary = fit(built.model, built.task, TrainConfig(epochs=2, batch_size=64), callbacks=[recorder])
    assert recorder.events[:4] == ["start", "epoch 1: 2 steps", "end 1 step 2 improved True", "epoch 2: 2 steps"]
    assert recorder.events[4].startswith("end 2 step 4 improved") and len(recorder.events) == 5
    assert summary["epochs"] == 2 and summary["steps"] == 4 and set(summary["final"]["metrics"]) == {"nll", "accuracy"}
    assert list(tmp_path.iterdir()) == []


def test_fit_from_python_matches_crnn_run(fresh_plugins, runner, tmp_path):
    """The CLI is a shell over fit(): the same seed gives the same metrics."""
    args = ["--cell", "lstm", "--init", "zero", "--task", "art", "--epochs", "2", "--set", "cell.hidden_size=8",
            *[f"--set=task.{k}={v}" for k, v in TINY_ART_OPTIONS.items()], "--batch-size", "64", "-q"]
    assert invoke(runner, ["run", *args, "--out", str(tmp_path / "cli")]).exit_code == 0
    torch.manual_seed(0)
    built = build_model(ModelSpec("lstm", "zero", "art", cell_options={"hidden_size": 8}, task_options=TINY_ART_OPTIONS),
                        fresh_plugins)
    summary = fit(built.model, built.task, TrainConfig(epochs=2, batch_size=64, lr=1e-3))
    records = [json.loads(line) for line in (tmp_path / "cli" / "metrics.jsonl").read_text().splitlines()]
    assert summary["final"]["metrics"] == records[-1]["metrics"] and summary["final"]["loss"] == records[-1]["loss"]


# -- 4. one declaration of the kinds, a core that knows no plugin ----------------------------------
def test_everything_derives_from_one_declaration_of_the_kinds(fresh_plugins, runner):
    scopes = [k.scope for k in KINDS]
    assert SCOPES == (*scopes, "train")
    assert set(fresh_plugins.registries) == {k.plural for k in KINDS}
    assert all(callable(getattr(hookspecs, k.hook)) for k in KINDS)
    fields = [f.name for f in dataclasses.fields(ModelSpec)]
    assert set(fields) == {*scopes, *(f"{s}_options" for s in scopes)}
    listed = json.loads(invoke(runner, ["list", "--json"]).stdout)
    assert list(listed) == [k.plural for k in KINDS]


def test_the_core_names_no_plugin():
    found = subprocess.run(["grep", "-rn", "crnn_plugins", str(ROOT / "crnn_core")], capture_output=True, text=True)
    assert found.stdout == ""


def test_sample_flags_come_from_the_tasks(fresh_plugins, runner):
    class Waves(ARTTask):
        """A task with its own generation parameters."""

        name = "waves"
        rollout_params = {"frequency": "the frequency to generate", "phase_shift": "a phase"}

    class P:
        @hookimpl
        def register_tasks(self, register):
            register(Waves)

    fresh_plugins.register(P(), name="waves-plugin")
    text = invoke(runner, ["sample", "--help"]).stdout
    assert "--frequency" in text and "--phase-shift" in text and "--period" in text and "(waves)" in text


def test_experiments_come_from_plugins(fresh_plugins, runner, tmp_path):
    assert set(fresh_plugins.experiments) == {"art", "lcd"}
    assert_one_line_error(invoke(runner, ["reproduce", "nope", "--out", str(tmp_path)]),
                          "unknown experiment 'nope' (choose from art, lcd)")
    listed = json.loads(invoke(runner, ["reproduce", "--list"]).stdout)
    assert listed["lcd"]["cell"] == "lstm" and listed["art"]["inits"] == ["zero", "free", "learned"]


# -- 6. tasks that declare what they cannot deliver; boolean environment variables ------------------
class MisspeltBest(ARTTask):
    """ART selecting best.pt by a metric it does not report."""

    name = "misspelt"
    best_metric = "acuracy"


class FloatTarget(ARTTask):
    """ART with an early-stop target that is not a (metric, value) pair."""

    name = "float-target"
    early_stop_target = 1.0  # type: ignore[assignment]


class UnknownTarget(ARTTask):
    """ART stopping early on a metric it does not report."""

    name = "unknown-target"
    early_stop_target = ("acc", 1.0)


@pytest.fixture
def bad_tasks(fresh_plugins):
    class P:
        @hookimpl
        def register_tasks(self, register):
            for cls in (MisspeltBest, FloatTarget, UnknownTarget):
                register(cls)

    fresh_plugins.register(P(), name="bad-tasks")
    return fresh_plugins


@pytest.mark.parametrize("task,fragment", [
    ("misspelt", "task 'misspelt' (tests.test_library.MisspeltBest): best_metric names metric 'acuracy', "
                 "but the task reports only: loss, nll, accuracy"),
    ("float-target", "task 'float-target' (tests.test_library.FloatTarget): early_stop_target must be None or a "
                     "(metric name, number) tuple, got 1.0"),
    ("unknown-target", "early_stop_target names metric 'acc'"),
])
def test_tasks_naming_unknown_metrics_are_refused_before_training(bad_tasks, runner, tmp_path, task, fragment):
    out = tmp_path / "run"
    result = invoke(runner, ["run", "--cell", "lstm", "--init", "zero", "--task", task, "--epochs", "1",
                             "--out", str(out), *TINY_ART])
    assert result.exit_code == 2
    assert_one_line_error(result, fragment)
    assert not (out / "metrics.jsonl").exists() and not (out / "checkpoints" / "last.pt").exists()


@pytest.mark.parametrize("value,on", [
    (None, False), ("", False), ("0", False), ("false", False), ("No", False), (" off ", False),
    ("1", True), ("true", True), ("yes", True), ("ON", True),
])
def test_env_flag_reads_every_boolean_variable_the_same_way(monkeypatch, value, on):
    if value is None:
        monkeypatch.delenv("CRNN_TEST_FLAG", raising=False)
    else:
        monkeypatch.setenv("CRNN_TEST_FLAG", value)
    assert env_flag("CRNN_TEST_FLAG") is on


@pytest.mark.parametrize("debug,traceback_shown", [("0", False), ("1", True)])
def test_crnn_debug_0_means_off(fresh_plugins, runner, monkeypatch, debug, traceback_shown):
    from crnn_core.commandline.main import cli

    @cli.command(name="explode-for-test")
    def explode():
        raise RuntimeError("a bug")

    monkeypatch.setenv("CRNN_DEBUG", debug)
    try:
        result = invoke(runner, ["explode-for-test"])
    finally:
        cli.commands.pop("explode-for-test")
    assert result.exit_code == 1
    assert ("Traceback" in result.stderr) is traceback_shown
    assert traceback_shown or "internal error: RuntimeError: a bug (set CRNN_DEBUG=1 for a traceback)" in result.stderr


def test_no_module_reads_a_boolean_variable_by_hand():
    for path in [*ROOT.glob("crnn_core/*.py"), *ROOT.glob("crnn_plugins/*.py")]:
        text = path.read_text()
        flag = r"[\"']CRNN_(DEBUG|NO_|PLUGINS_STRICT|VERBOSE)\w*[\"']"
        reads = rf"environ\.get\({flag}|environ\[{flag}\](?!\s*=[^=])"  # writing one (normalising it) is fine
        assert not re.search(reads, text), f"{path}: read boolean variables with crnn_core.env_flag"
        assert "print(" not in text, f"{path}: report through warnings/logging"
