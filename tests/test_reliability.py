"""Reliability at the edges: numerical faults, untrusted checkpoints and config files, plugins at fault.

(Interruption and kill -9 are in test_interrupt.py, property tests in test_properties.py.)
"""

from __future__ import annotations

import json
import math
import os
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from crnn_core import CheckpointError, hookimpl
from crnn_core.rundirs.rundir import load_checkpoint, read_metrics, truncate_metrics
from crnn_plugins.tasks.art import ARTTask

from .conftest import TINY_ART, assert_one_line_error, crnn_process, fake_distribution, invoke

#: 4 steps per epoch.
BASE = ["--cell", "fastweights", "--init", "learned", "--task", "art", "-q", *TINY_ART, "--set", "cell.backend=reference"]


pytestmark = pytest.mark.usefixtures("thread_count_kept")


def run(runner, out: Path, *extra: str):
    return invoke(runner, ["run", *BASE, "--out", str(out), *extra])


def records(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


# -- 2. numerical faults ----------------------------------------------------------------------------
def poison(monkeypatch, at_steps: set[int], kind: str) -> None:
    """Make the training loss (kind='loss') or only its gradient (kind='grad') NaN at the given steps."""
    real = ARTTask.loss
    calls = {"n": 0}

    def loss(self, predictions, batch):
        value = real(self, predictions, batch)
        if not torch.is_grad_enabled():  # validation
            return value
        calls["n"] += 1
        if calls["n"] in at_steps:
            if kind == "loss":
                return value * float("nan")
            return value + torch.sqrt(predictions.sum() * 0.0)  # value unchanged, gradient 0.5/sqrt(0)*0 = NaN
        return value

    monkeypatch.setattr(ARTTask, "loss", loss)


@pytest.mark.parametrize("kind", ["loss", "grad"])
def test_nonfinite_stops_naming_epoch_and_step_and_keeps_the_last_good_checkpoint(runner, tmp_path, monkeypatch, kind):
    out = tmp_path / "run"
    poison(monkeypatch, {6}, kind)  # epoch 2, its second step
    result = run(runner, out, "--epochs", "3")
    assert result.exit_code == 3
    assert_one_line_error(result, "non-finite loss or gradient at epoch 2, step 6")
    assert f"last good checkpoint: {out / 'checkpoints' / 'last.pt'}" in result.stderr
    assert "train.on_nonfinite=skip" in result.stderr
    ckpt = load_checkpoint(out / "checkpoints" / "last.pt")
    assert (ckpt["epoch"], ckpt["step"], ckpt["batch_in_epoch"]) == (1, 4, 0)
    assert all(torch.isfinite(t).all() for t in ckpt["model"].values())
    assert [r["epoch"] for r in records(out)] == [1]
    # the kept checkpoint resumes (the fault was transient)
    monkeypatch.undo()
    assert invoke(runner, ["run", "--resume", str(out), "-q"]).exit_code == 0
    assert [r["epoch"] for r in records(out)] == [1, 2, 3]


def test_nonfinite_skip_continues(runner, tmp_path, monkeypatch):
    out = tmp_path / "run"
    poison(monkeypatch, {2, 6}, "loss")
    poison(monkeypatch, {9}, "grad")  # wraps the first: counts its own calls, same steps
    result = run(runner, out, "--epochs", "3", "--set", "train.on_nonfinite=skip")
    assert result.exit_code == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["nonfinite_skipped"] == 3 and summary["steps"] == 12
    assert [r["epoch"] for r in records(out)] == [1, 2, 3]
    assert all(math.isfinite(r["loss"]) and math.isfinite(r["train_loss"]) for r in records(out))
    assert load_checkpoint(out / "checkpoints" / "last.pt")["nonfinite_skipped"] == 3
    assert [r["nonfinite_skipped"] for r in records(out)] == [1, 1, 1]  # per epoch


def test_an_epoch_without_one_finite_step_stops_with_exit_3(runner, tmp_path, monkeypatch):
    """With on_nonfinite=skip, an epoch whose every step was skipped learned nothing: the run
    stops (exit 3) before recording it, rather than recording train_loss 0.0 and exiting 0."""
    out = tmp_path / "run"
    poison(monkeypatch, {5, 6, 7, 8}, "loss")  # all of epoch 2
    result = run(runner, out, "--epochs", "3", "--set", "train.on_nonfinite=skip")
    assert result.exit_code == 3, result.stderr
    assert_one_line_error(result, "every step of epoch 2 had a non-finite loss or gradient (4 skipped)")
    assert f"last good checkpoint: {out / 'checkpoints' / 'last.pt'}" in result.stderr
    assert [r["epoch"] for r in records(out)] == [1]
    assert load_checkpoint(out / "checkpoints" / "last.pt")["epoch"] == 1


def strict_json(text: str):
    """json.loads that refuses NaN/Infinity, as every non-Python JSON reader does."""
    def refuse(token):
        raise ValueError(f"not JSON: {token}")
    return json.loads(text, parse_constant=refuse)


def test_metrics_and_summary_are_standard_json_when_values_are_not_finite(runner, tmp_path, monkeypatch):
    """A diverged model's NaN validation loss is written as null with a "nonfinite" flag naming it."""
    real = ARTTask.loss

    def nan_in_validation(self, predictions, batch):
        value = real(self, predictions, batch)
        return value if torch.is_grad_enabled() else value * float("nan")

    monkeypatch.setattr(ARTTask, "loss", nan_in_validation)
    out = tmp_path / "run"
    result = run(runner, out, "--epochs", "1")
    assert result.exit_code == 0, result.stderr
    summary = strict_json(result.stdout)
    assert summary["final"]["loss"] is None and "final.loss" in summary["nonfinite"]
    (line,) = (out / "metrics.jsonl").read_text().splitlines()
    record = strict_json(line)
    assert record["loss"] is None and record["nonfinite"] == ["loss"]


def test_an_enormous_learning_rate_is_caught(runner, tmp_path):
    out = tmp_path / "run"
    result = run(runner, out, "--epochs", "2", "--lr", "1e30")
    assert result.exit_code == 3
    assert_one_line_error(result, "non-finite loss or gradient at epoch 1, step ")
    assert "no checkpoint was written yet" in result.stderr
    assert not (out / "checkpoints" / "last.pt").exists()
    skipped = run(runner, tmp_path / "skip", "--epochs", "1", "--lr", "1e30", "--set", "train.on_nonfinite=skip")
    assert skipped.exit_code == 0, skipped.stderr
    assert json.loads(skipped.stdout)["nonfinite_skipped"] >= 1


# -- 3. untrusted files -----------------------------------------------------------------------------
@pytest.fixture
def finished(runner, tmp_path):
    out = tmp_path / "run"
    assert run(runner, out, "--epochs", "1").exit_code == 0
    return out


def resume(runner, out: Path):
    return invoke(runner, ["run", "--resume", str(out), "-q"])


def test_truncated_checkpoint_is_refused(runner, finished):
    last = finished / "checkpoints" / "last.pt"
    data = last.read_bytes()
    for cut in (len(data) // 2, 100, 0):
        last.write_bytes(data[:cut])
        assert_one_line_error(resume(runner, finished), "is corrupt or not a crnn checkpoint")


def test_random_bytes_are_refused(runner, finished):
    (finished / "checkpoints" / "last.pt").write_bytes(os.urandom(4096))
    assert_one_line_error(resume(runner, finished), "is corrupt or not a crnn checkpoint")


class Evil:
    """Unpickling this would create a directory: weights_only=True must refuse it instead."""

    marker = ""

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_malicious_pickle_is_refused_and_never_runs(runner, finished):
    evil = Evil()
    evil.marker = str(finished / "pwned")
    torch.save({"format": "crnn-checkpoint-v1", "model": {}, "payload": evil}, finished / "checkpoints" / "last.pt")
    result = resume(runner, finished)
    assert_one_line_error(result, "was refused: loading it could run code")
    assert "mkdir" in result.stderr  # what the restricted unpickler refused, in the same line
    assert "This file can still be loaded" not in result.stderr  # never an invitation to weights_only=False
    assert not (finished / "pwned").exists()


def test_a_pickle_that_is_not_a_checkpoint_is_refused(runner, finished):
    torch.save([1, 2, 3], finished / "checkpoints" / "last.pt")
    assert_one_line_error(resume(runner, finished), "is not a crnn-checkpoint-v1 file")


@pytest.mark.parametrize("option", ["cell.inner_steps=2", "cell.hidden_size=20", "train.lr=0.01"])
def test_a_checkpoint_from_another_config_is_refused(runner, tmp_path, finished, option):
    other = tmp_path / "other"
    assert run(runner, other, "--epochs", "1", "--set", option).exit_code == 0
    (finished / "checkpoints" / "last.pt").write_bytes((other / "checkpoints" / "last.pt").read_bytes())
    assert_one_line_error(resume(runner, finished), "was written by a different configuration")


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda c: c.update(epoch="one"), "has a missing or invalid field"),
        (lambda c: c.update(batch_in_epoch=999), "impossible"),
        (lambda c: c.pop("rng"), "has a missing or invalid field"),
        (lambda c: c.update(rng=torch.zeros(3)), "has a missing or invalid field"),
        (lambda c: c["model"].update({"cell.W": torch.zeros(2, 2)}), "does not fit this model"),
        (lambda c: c["model"].popitem(), "does not fit this model"),
        # each of these is refused when the run starts, not found after training restarted
        (lambda c: c.update(epoch=0.7), "'epoch' must be an integer >= 0, got 0.7"),
        (lambda c: c.update(epoch=10**30), "is impossible with 4 steps per epoch"),
        (lambda c: c.update(step=3), "is impossible with 4 steps per epoch"),
        (lambda c: c.update(epoch_loss=float("nan")), "'epoch_loss' must be a finite number"),
        (lambda c: c.update(best=float("inf")), "'best' must be a finite number"),
        (lambda c: next(iter(c["optimizer"]["state"].values())).update(exp_avg=torch.zeros(3)),
         "optimizer state 'exp_avg' of parameter 0 has shape [3]"),
        # a state_dict from another model names the keys and shapes that differ (first 3, with a count)
        (lambda c: c["model"].update({"rnn.cell.extra": torch.zeros(1)}), "1 unexpected keys (rnn.cell.extra)"),
        (lambda c: [c["model"].pop(k) for k in list(c["model"])[:5]], "5 keys missing ("),
        (lambda c: c.update(model={k: torch.zeros(*(n + 1 for n in v.shape)) for k, v in c["model"].items()}),
         "shapes differ ("),
        (lambda c: c.update(model=[1, 2]), "the weights are a list, not a dict of tensors"),
    ],
)
def test_a_tampered_checkpoint_is_refused(runner, finished, edit, fragment):
    last = finished / "checkpoints" / "last.pt"
    ckpt = torch.load(last, weights_only=True)
    edit(ckpt)
    torch.save(ckpt, last)
    assert_one_line_error(resume(runner, finished), fragment)


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda c: "{not json", "is unreadable"),
        (lambda c: [1, 2], "is not a valid crnn run config"),
        (lambda c: {**c, "model": None}, "is not a valid crnn run config"),
        (lambda c: c["model"].update(cell=5) or c, "model.cell must be a component name"),
        (lambda c: c["model"].update(cell="fastweight") or c, "Unknown cell 'fastweight'. Did you mean 'fastweights'?"),
        (lambda c: c["model"].update(cell_options=[[1]]) or c, "model.cell_options must be an object"),
        (lambda c: c["model"]["cell_options"].update(hidden_size="abc") or c, "cell.hidden_size: expected an integer"),
        (lambda c: c["model"]["cell_options"].update(hidden_size=-3) or c, "hidden_size must be >= 1"),
        (lambda c: c["model"]["cell_options"].update(bogus=1) or c, "unknown option cell.bogus"),
        (lambda c: c["model"]["task_options"].update(pairs=[4]) or c, "task.pairs: expected an integer"),
        (lambda c: c["model"].update(extra=1) or c, "is not a crnn run config"),
        (lambda c: c["train"].update(lr=-1) or c, "lr must be positive"),
        (lambda c: c["train"].update(on_nonfinite="ignore") or c, "not one of stop, skip"),
        (lambda c: c["train"].update(batch_size=32) or c, "was written by a different configuration"),
        (lambda c: c["model"]["cell_options"].update(lam=0.5) or c, "was written by a different configuration"),
        (lambda c: '{"model": ' + "[" * 100000 + "]" * 100000 + "}", "is unreadable: nested too deeply"),
    ],
)
def test_a_hand_edited_config_is_validated_on_resume(runner, finished, edit, fragment):
    path = finished / "config.json"
    edited = edit(json.loads(path.read_text()))
    path.write_text(edited if isinstance(edited, str) else json.dumps(edited))
    assert_one_line_error(resume(runner, finished), fragment)


@pytest.mark.parametrize(
    "line, fragment",
    [
        ("[1, 2]", "is not a metrics record: expected an object, got list"),
        ("7", "is not a metrics record: expected an object, got int"),
        ('{"epoch": "2", "step": 8, "loss": 1.0}', "'epoch' must be an integer >= 0"),
        ('{"epoch": 2, "step": 8, "loss": "low"}', "'loss' must be a number or null"),
        ('{"epoch": 2, "step": 8, "loss": 1.0, "metrics": {"accuracy": [1]}}', "'metrics.accuracy' must be a number"),
    ],
)
def test_a_malformed_metrics_record_is_refused_by_plot_and_resume(runner, tmp_path, finished, line, fragment):
    """Each is one line and exit 2 from plot and from --resume: not an internal error, not read as data."""
    with open(finished / "metrics.jsonl", "a") as f:
        f.write(line + "\n")
    assert_one_line_error(invoke(runner, ["plot", str(finished), "--out", str(tmp_path / "p.png")]),
                          "metrics.jsonl:2 is not a metrics record")
    assert_one_line_error(invoke(runner, ["plot", str(finished), "--out", str(tmp_path / "p.png")]), fragment)
    assert_one_line_error(invoke(runner, ["run", "--resume", str(finished), "--epochs", "2", "-q"]), fragment)


# -- 4. plugins at fault ----------------------------------------------------------------------------
def test_a_raising_register_commands_leaves_the_cli_working(fresh_plugins, runner, caplog):
    from crnn_core.commandline.main import cli

    class Broken:
        @hookimpl
        def register_commands(self, cli):
            @cli.command(name="half-added")
            def half():
                """Added before the hook failed."""

            raise RuntimeError("no commands today")

    fresh_plugins.register(Broken(), name="broken-commands")
    try:
        fresh_plugins.add_commands(cli)
        info = fresh_plugins.info["broken-commands"]
        assert not info.ok and "register_commands raised RuntimeError: no commands today" in info.errors[0]
        assert "plugin 'broken-commands'" in caplog.text  # the CLI shows `crnn` log records on stderr
        assert invoke(runner, ["list", "cells"]).exit_code == 0
        rows = {row["name"]: row for row in json.loads(invoke(runner, ["plugins", "--json"]).stdout)}
        assert rows["broken-commands"]["status"] == "failed"
    finally:
        cli.commands.pop("half-added", None)


def test_a_hook_calling_sys_exit_is_isolated(fresh_plugins):
    class Quitter:
        @hookimpl
        def register_tasks(self, register):
            sys.exit(3)

    fresh_plugins.register(Quitter(), name="quitter")
    assert "art" in fresh_plugins.registry("tasks")
    assert "register_tasks raised SystemExit: 3" in fresh_plugins.info["quitter"].errors[0]


def test_a_hook_with_a_wrong_signature_is_refused(fresh_plugins):
    class WrongArgs:
        @hookimpl
        def register_cells(self, register, extra):  # pluggy validates the argument names
            pass

    fresh_plugins.register(WrongArgs(), name="wrong-args")
    assert "registration failed" in fresh_plugins.info["wrong-args"].errors[0]
    assert "fastweights" in fresh_plugins.registry("cells")


BROKEN_PLUGINS = {
    "crnn_bad_import": "raise RuntimeError('missing dependency foo')\n",
    "crnn_bad_exit": "import sys\nsys.exit('this plugin quits on import')\n",
    "crnn_bad_hook": """
        from crnn_core import hookimpl
        @hookimpl
        def register_cells(register):
            raise ValueError('hook exploded')
    """,
    "crnn_bad_class": """
        from crnn_core import hookimpl
        @hookimpl
        def register_tasks(register):
            register(dict)
    """,
    "crnn_dup_cell": """
        from crnn_core import hookimpl
        from crnn_plugins.cells.lstm import LSTMCell
        class Impostor(LSTMCell):
            '''Claims the lstm name.'''
        @hookimpl
        def register_cells(register):
            register(Impostor, name='lstm')
    """,
    "crnn_bad_commands": """
        from crnn_core import hookimpl
        @hookimpl
        def register_commands(cli):
            raise KeyError('commands')
    """,
}


@pytest.fixture(scope="module")
def broken_site(tmp_path_factory):
    """A directory on PYTHONPATH with one installed distribution whose entry points are all broken."""
    modules = {module: textwrap.dedent(source) for module, source in BROKEN_PLUGINS.items()}
    entry_points = "[crnn]\n" + "".join(f"{m[5:]} = {m}\n" for m in BROKEN_PLUGINS)
    return fake_distribution(tmp_path_factory.mktemp("broken-site"), "crnn-broken-plugins", modules, entry_points)


def test_installed_broken_plugins_are_named_and_everything_else_works(broken_site, tmp_path):
    result = crnn_process(broken_site, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    expected = {
        "bad_import": "import failed: RuntimeError: missing dependency foo",
        "bad_exit": "import failed: SystemExit: this plugin quits on import",
        "bad_hook": "register_cells raised ValueError: hook exploded",
        "bad_class": "not a subclass of crnn_core.interfaces.task.Task",
        "dup_cell": "duplicate cell 'lstm'",
        "bad_commands": "register_commands raised KeyError",
    }
    for name, fragment in expected.items():
        assert rows[name]["status"] == "failed" and rows[name]["package"] == "crnn-broken-plugins", rows[name]
        assert fragment in rows[name]["errors"][0], rows[name]
        assert f"crnn: plugin '{name}' (crnn-broken-plugins) failed" in result.stderr
    assert "Traceback" not in result.stderr
    assert all(row["status"] == "ok" for row in rows.values() if row["builtin"])
    # a training run with the built-ins still works, and `lstm` is still the built-in one
    out = tmp_path / "run"
    trained = crnn_process(broken_site, "run", "--cell", "lstm", "--init", "zero", "--epochs", "1", "--out", str(out), "-q", *TINY_ART)
    assert trained.returncode == 0, trained.stderr
    assert json.loads((out / "plugins.json").read_text())["cell"]["package"] == "crnn"
    strict = crnn_process({**broken_site, "CRNN_PLUGINS_STRICT": "1"}, "list", "cells")
    assert strict.returncode == 2 and strict.stderr.startswith("Error: crnn: plugin '")
    assert "Traceback" not in strict.stderr



def test_truncate_metrics_drops_later_epochs_and_a_half_written_last_line(tmp_path):
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"epoch": e, "loss": 1.0 / e}) for e in (1, 2, 3)]
    path.write_text("\n".join(lines) + '\n{"epoch": 4, "lo')  # killed while appending epoch 4
    truncate_metrics(path, last_epoch=2)
    assert path.read_text() == lines[0] + "\n" + lines[1] + "\n"
    path.write_text('{"epoch": 1, "lo')  # nothing complete yet
    truncate_metrics(path, last_epoch=5)
    assert path.read_text() == "" and read_metrics(path) == []
    path.write_text(lines[0] + "\nnot json\n")
    with pytest.raises(CheckpointError, match=r"metrics.jsonl:2 is not valid JSON"):
        truncate_metrics(path, last_epoch=5)
