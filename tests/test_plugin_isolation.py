"""Plugins, all or nothing: rollback, command and entry-point clashes,
a hanging import, the Cell/InitStrategy contract checked on the first batch, CRNN_DEBUG tracebacks,
hook declaration mistakes."""

from __future__ import annotations

import re

import importlib.metadata
import signal
import subprocess
import sys
import threading

import click
import pytest
import torch

from crnn_core import hookimpl
from crnn_core.plugin_manager.manager import PluginSystem
from crnn_plugins.cells.lstm import LSTMCell
from crnn_plugins.inits.zero_init import ZeroInit

from .conftest import TINY_ART, assert_one_line_error, crnn_process, fake_distribution, invoke

pytestmark = pytest.mark.usefixtures("thread_count_kept")


class TinyCell(LSTMCell):
    """A cell a failing plugin registers before it fails."""

    name = "tiny-rollback"


# -- 9. isolation is all or nothing -----------------------------------------------------------------
def test_a_plugin_that_registers_then_raises_is_rolled_back(fresh_plugins):
    class HalfDone:
        @hookimpl
        def register_cells(self, register):
            register(TinyCell)
            raise RuntimeError("failed after registering")

    fresh_plugins.register(HalfDone(), name="half-done")
    assert not fresh_plugins.info["half-done"].ok
    assert "tiny-rollback" not in fresh_plugins.registry("cells")


def test_a_failure_in_a_later_hook_rolls_back_the_earlier_ones(fresh_plugins):
    class CellsThenBadTask:
        @hookimpl
        def register_cells(self, register):
            register(TinyCell)

        @hookimpl
        def register_tasks(self, register):
            register(dict)  # not a Task

    fresh_plugins.register(CellsThenBadTask(), name="cells-then-bad-task")
    assert "not a subclass of crnn_core.interfaces.task.Task" in fresh_plugins.info["cells-then-bad-task"].errors[0]
    assert "tiny-rollback" not in fresh_plugins.registry("cells")
    assert "lstm" in fresh_plugins.registry("cells")


def test_a_command_name_that_exists_is_refused_naming_both_providers(fresh_plugins, runner):
    from crnn_core.commandline.main import cli

    builtin_run = cli.get_command(None, "run")

    class Hijack:
        @hookimpl
        def register_commands(self, cli):
            @cli.command(name="hello-hijack")
            def hello():
                """Added alongside the hijack."""

            @cli.command(name="run")
            def run():
                """Replaces crnn run."""
                click.echo("hijacked")

    fresh_plugins.register(Hijack(), name="hijack", package="crnn-hijack")
    fresh_plugins.add_commands(cli)
    try:
        error = fresh_plugins.info["hijack"].errors[0]
        assert "command 'run' already exists (provided by 'crnn')" in error and "'crnn-hijack'" in error
        assert cli.commands["run"] is builtin_run
        assert "hello-hijack" not in cli.commands  # all or nothing
    finally:
        cli.commands["run"] = builtin_run
        cli.commands.pop("hello-hijack", None)


def test_a_command_added_before_register_commands_raised_is_removed(fresh_plugins):
    from crnn_core.commandline.main import cli

    class Broken:
        @hookimpl
        def register_commands(self, cli):
            @cli.command(name="half-added-rollback")
            def half():
                """Added before the hook failed."""

            raise RuntimeError("no commands today")

    fresh_plugins.register(Broken(), name="broken-commands")
    try:
        fresh_plugins.add_commands(cli)
        assert "half-added-rollback" not in cli.commands
    finally:
        cli.commands.pop("half-added-rollback", None)


class _Dist:
    def __init__(self, name: str) -> None:
        self.metadata = {"Name": name}
        self.version = "1.0"


def test_an_entry_point_name_clash_is_failed_with_both_packages(monkeypatch):
    module = type(sys)("crnn_test_clash_plugin")
    module.register_cells = hookimpl(lambda register: register(TinyCell))
    monkeypatch.setitem(sys.modules, "crnn_test_clash_plugin", module)
    a = importlib.metadata.EntryPoint("clash", "crnn_test_clash_plugin", "crnn")._for(_Dist("pkg-a"))
    b = importlib.metadata.EntryPoint("clash", "crnn_test_clash_plugin", "crnn")._for(_Dist("pkg-b"))
    a_again = importlib.metadata.EntryPoint("clash", "crnn_test_clash_plugin", "crnn")._for(_Dist("pkg-a"))
    real = importlib.metadata.entry_points
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda **kw: [a, b, a_again] if kw.get("group") == "crnn" else real(**kw))
    system = PluginSystem().fill()
    rows = [info for info in system.info.values() if info.name == "clash"]
    assert sorted(info.package for info in rows) == ["pkg-a", "pkg-b"]  # the same package twice counts once
    for info in rows:
        assert not info.ok and "'pkg-a'" in info.errors[0] and "'pkg-b'" in info.errors[0]
    assert "tiny-rollback" not in system.registry("cells")


SLOW_PLUGIN = """
import os, time
open(os.environ["CRNN_TEST_IMPORTING"], "w").close()
while True:  # an import that never finishes (a network mount, a lock, a deadlock)
    time.sleep(0.05)
"""


@pytest.fixture
def slow_site(tmp_path):
    return fake_distribution(tmp_path / "site", "crnn-slow-plugin", {"crnn_slow_plugin": SLOW_PLUGIN},
                             "[crnn]\nslow = crnn_slow_plugin\n")


@pytest.mark.parametrize("sig, times", [(signal.SIGINT, 1), (signal.SIGTERM, 1), (signal.SIGINT, 2)],
                         ids=["SIGINT", "SIGTERM", "SIGINT-twice"])
def test_a_hanging_plugin_import_is_named_and_a_signal_ends_it_in_one_line(slow_site, tmp_path, sig, times):
    env = {**slow_site, "CRNN_PLUGIN_SLOW_SECONDS": "0.2", "CRNN_TEST_IMPORTING": str(tmp_path / "importing")}
    proc = subprocess.Popen([sys.executable, "-m", "crnn_core", "list", "cells"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    watchdog = threading.Timer(120, proc.kill)  # only if crnn never says anything (the import never ends)
    watchdog.start()
    try:
        line = proc.stderr.readline()  # blocks until crnn says something
        while line.startswith("crnn: still loading plugin 'crnn_plugins."):  # a built-in slowed by a loaded machine
            line = proc.stderr.readline()
        assert line.startswith("crnn: still loading plugin 'slow' (crnn-slow-plugin, crnn_slow_plugin) after 0.2s"), line
        assert (tmp_path / "importing").exists()
        for _ in range(times):  # Ctrl-C twice: the second one must not turn the message into a traceback
            proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        watchdog.cancel()
        proc.kill()
    assert proc.returncode == 128 + sig, stderr
    assert stderr.strip().splitlines() == [f"Interrupted: {sig.name} received during start-up; nothing was written"]
    assert stdout == ""


@pytest.mark.parametrize("args", [["--help"], ["--version"]])
def test_help_and_version_import_no_plugin(slow_site, tmp_path, args):
    env = {**slow_site, "CRNN_TEST_IMPORTING": str(tmp_path / "importing")}
    done = subprocess.run([sys.executable, "-m", "crnn_core", *args], capture_output=True, text=True, env=env,
                          timeout=120)  # importing the plugin never ends: waiting for it would time out
    assert done.returncode == 0, done.stderr
    assert not (tmp_path / "importing").exists()  # no plugin was even imported
    if args == ["--version"]:
        assert done.stdout.startswith("crnn, version ")
    else:
        assert "Commands:" in done.stdout and "reproduce" in done.stdout and "kernels" in done.stdout
        assert done.stderr == ""


# -- 10. the contract is checked -----------------------------------------------------------------------
class ShortCell(LSTMCell):
    """Outputs one step short: [B, T-1, H]."""

    name = "short"

    def forward(self, inputs, state):
        outputs, final = super().forward(inputs, state)
        return outputs[:, :-1], final


class StatelessCell(LSTMCell):
    """Returns a final state without 'c'."""

    name = "forgetful"

    def forward(self, inputs, state):
        outputs, final = super().forward(inputs, state)
        return outputs, {"h": final["h"]}


class WideInit(ZeroInit):
    """Builds 'h' one feature too wide."""

    name = "wide"

    def forward(self, batch_size, context, *, device, dtype, sample=None):
        state = super().forward(batch_size, context, device=device, dtype=dtype, sample=sample)
        return {**state, "h": torch.zeros(batch_size, state["h"].shape[1] + 1, device=device, dtype=dtype)}


class Breakers:
    @hookimpl
    def register_cells(self, register):
        register(ShortCell)
        register(StatelessCell)

    @hookimpl
    def register_init_strategies(self, register):
        register(WideInit)


@pytest.mark.parametrize(
    "cell, init, fragment",
    [
        ("short", "zero", "cell 'short' (tests.test_plugin_isolation.ShortCell) broke the Cell contract on the first batch: "
                          "outputs have shape [B, 10, 128], expected [B, T, hidden_size] = [B, 11, 128]"),
        ("forgetful", "zero", "cell 'forgetful' (tests.test_plugin_isolation.StatelessCell) broke the Cell contract on the "
                              "first batch: the final state has components ['h'], but state_spec() declares ['c', 'h']"),
        ("lstm", "wide", "init strategy 'wide' (tests.test_plugin_isolation.WideInit) broke the InitStrategy contract on "
                         "the first batch: the initial state['h'] has shape"),
    ],
    ids=["outputs-one-step-short", "final-state-keys", "init-state-shape"],
)
def test_a_broken_contract_is_named_on_the_first_batch(fresh_plugins, runner, tmp_path, cell, init, fragment):
    fresh_plugins.register(Breakers(), name="breakers")
    out = tmp_path / "run"
    result = invoke(runner, ["run", "--cell", cell, "--init", init, "--task", "art", "--epochs", "1", "-q", *TINY_ART,
                             "--out", str(out)])
    assert result.exit_code == 2
    # the first batch is the task-metric probe's (2 examples) or training's: batch sizes read as B
    assert_one_line_error(result, "broke the")
    line = [ln for ln in result.stderr.splitlines() if ln.startswith("Error")][0]
    assert fragment in re.sub(r"\[\d+, ", "[B, ", line), line
    assert not (out / "metrics.jsonl").exists()  # nothing trained


def test_crnn_debug_shows_a_plugins_own_traceback(fresh_plugins, runner, tmp_path, monkeypatch, capsys):
    class Exploding(LSTMCell):
        """A cell whose constructor fails deep inside."""

        name = "exploding-debug"

        def __init__(self, input_size, options):
            self._allocate_budget()

        def _allocate_budget(self):
            raise RuntimeError("no GPU budget")

    class P:
        @hookimpl
        def register_cells(self, register):
            register(Exploding)

    class RaisingHook:
        @hookimpl
        def register_tasks(self, register):
            raise ValueError("hook exploded in register_tasks")

    monkeypatch.setenv("CRNN_DEBUG", "1")
    fresh_plugins.register(RaisingHook(), name="raising-hook")
    assert "Traceback" in capsys.readouterr().err  # registration: the hook's own traceback
    fresh_plugins.register(P(), name="exploding-plugin")
    result = invoke(runner, ["run", "--cell", "exploding-debug", "--init", "zero", "-q", *TINY_ART, "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "Traceback" in result.stderr and "_allocate_budget" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("Error: cell 'exploding-debug'")
    monkeypatch.delenv("CRNN_DEBUG")
    quiet = invoke(runner, ["run", "--cell", "exploding-debug", "--init", "zero", "-q", *TINY_ART, "--out", str(tmp_path / "q")])
    assert "Traceback" not in quiet.stderr


def test_an_unmarked_hook_function_is_reported(fresh_plugins):
    class Unmarked:
        def register_cells(self, register):  # @hookimpl forgotten: pluggy would ignore it silently
            register(TinyCell)

    fresh_plugins.register(Unmarked(), name="unmarked")
    error = fresh_plugins.info["unmarked"].errors[0]
    assert "register_cells is not marked with @crnn_core.hookimpl" in error


def test_a_misnamed_hook_is_reported_with_a_suggestion(fresh_plugins):
    class Misnamed:
        @hookimpl
        def register_cell(self, register):
            register(TinyCell)

    fresh_plugins.register(Misnamed(), name="misnamed")
    assert "is not a crnn hook; did you mean 'register_cells'?" in fresh_plugins.info["misnamed"].errors[0]


def test_a_misnamed_hook_argument_is_reported(fresh_plugins):
    class WrongArgument:
        @hookimpl
        def register_cells(self, reg):
            reg(TinyCell)

    fresh_plugins.register(WrongArgument(), name="wrong-argument")
    error = fresh_plugins.info["wrong-argument"].errors[0]
    assert "hook register_cells(reg): argument 'reg' is not one that crnn passes; the hook's arguments are (register)" in error
    assert "tiny-rollback" not in fresh_plugins.registry("cells")


DECLARED_COMMANDS = """
import click

@click.command()
def hello():
    '''Say hello.'''
    click.echo("hello from a declared command")

@click.command(name="run")
def run():
    '''Would replace crnn run.'''
    click.echo("hijacked")

not_a_command = 42
"""


@pytest.fixture
def declaring_site(tmp_path):
    """A distribution that declares commands by name in the `crnn.cli` entry-point group."""
    return fake_distribution(tmp_path / "site", "crnn-hello-cmd", {"crnn_hello_cmd": DECLARED_COMMANDS},
                             "[crnn.cli]\nhello = crnn_hello_cmd:hello\nrun = crnn_hello_cmd:run\n"
                             "missing = crnn_hello_cmd:nowhere\nnumber = crnn_hello_cmd:not_a_command\n")


def test_a_declared_command_is_listed_by_name_and_loaded_on_use(declaring_site):
    help_text = crnn_process(declaring_site, "--help").stdout
    assert "hello      (from crnn-hello-cmd; crnn hello --help)" in help_text
    assert crnn_process(declaring_site, "hello").stdout == "hello from a declared command\n"
    assert "Say hello." in crnn_process(declaring_site, "hello", "--help").stdout
    assert "hijacked" not in crnn_process(declaring_site, "run", "--help").stdout  # a core name stays the core's


@pytest.mark.parametrize("name, fragment", [
    ("missing", "command 'missing' (crnn-hello-cmd, crnn_hello_cmd:nowhere) failed to load: AttributeError:"),
    ("number", "command 'number' (crnn-hello-cmd): crnn_hello_cmd:not_a_command is not a click command"),
])
def test_a_declared_command_that_cannot_load_is_one_line(declaring_site, name, fragment):
    done = crnn_process(declaring_site, name)
    assert done.returncode == 2 and done.stderr.startswith(f"Error: {fragment}"), done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
