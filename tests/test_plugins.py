"""The plugin system: built-ins through hooks, plugin objects registered in code, safe loading."""

import importlib.metadata
import inspect
import json
import re
import sys
import types
from pathlib import Path

import click
import pytest

from crnn_core import Cell, InitStrategy, PluginError, hookimpl
from crnn_core.plugin_manager import hookspecs
from crnn_core.plugin_manager import manager as plugins_module
from crnn_core.plugin_manager.manager import COMMANDS_GROUP, PluginSystem, builtin_entry_points
from crnn_plugins.cells.lstm import LSTMCell

from .conftest import invoke

DOCS = Path(__file__).resolve().parent.parent / "docs" / "plugins.md"


class TinyCell(LSTMCell):
    """A cell registered by a plugin object in a test."""

    name = "tiny"


class Plugin:
    """A plugin object (not a module) implementing two hooks."""

    @hookimpl
    def register_cells(self, register):
        register(TinyCell)

    @hookimpl
    def register_commands(self, cli):
        @cli.command(name="hello")
        def hello():
            """Say hello."""
            click.echo("hello from a plugin")


def test_builtins_are_registered_through_hooks(fresh_plugins):
    """The built-ins are this distribution's `crnn` entry points, loaded like a third party's."""
    declared = {ep.name for ep in builtin_entry_points()}
    commands = {ep.name for ep in builtin_entry_points(COMMANDS_GROUP)}
    assert {"crnn_plugins.lstm", "crnn_plugins.fastweights", "crnn_plugins.art", "crnn_plugins.paper"} <= declared
    assert {"crnn_plugins.paper"} == commands
    # a component lookup loads the component plugins only; the experiments load the command plugins
    assert {info.name for info in fresh_plugins.info.values() if info.builtin} == declared - commands
    assert set(fresh_plugins.experiments) == {"art", "lcd"}
    assert {info.name for info in fresh_plugins.info.values() if info.builtin} == declared
    assert all(info.package == "crnn" and info.ok for info in fresh_plugins.info.values() if info.builtin)
    assert "fastweights" in fresh_plugins.registry("cells")
    assert {"zero", "free", "learned"} <= set(fresh_plugins.registry("inits").names())
    assert {"identity", "linear", "mlp"} <= set(fresh_plugins.registry("contexts").names())
    assert "art" in fresh_plugins.registry("tasks")
    for entry in fresh_plugins.registry("cells"):
        assert entry.provider == "crnn"


def test_register_plugin_object_in_code(fresh_plugins):
    fresh_plugins.register(Plugin(), name="test-plugin")
    entry = fresh_plugins.registry("cells").get("tiny")
    assert entry.cls is TinyCell
    assert fresh_plugins.info["test-plugin"].hooks == ["register_cells", "register_commands"]


def test_register_commands_hook_adds_a_command(fresh_plugins, runner):
    from crnn_core.commandline.main import cli

    fresh_plugins.register(Plugin(), name="test-plugin")
    fresh_plugins.add_commands(cli)
    try:
        result = invoke(runner, ["hello"])
        assert result.exit_code == 0 and "hello from a plugin" in result.output
    finally:
        cli.commands.pop("hello", None)


def test_a_raising_hook_is_reported_and_the_rest_works(fresh_plugins, caplog):
    class Broken:
        @hookimpl
        def register_cells(self, register):
            raise RuntimeError("boom")

    fresh_plugins.register(Broken(), name="broken")
    assert "fastweights" in fresh_plugins.registry("cells")
    info = fresh_plugins.info["broken"]
    assert not info.ok and "register_cells raised RuntimeError: boom" in info.errors[0]
    assert "plugin 'broken'" in caplog.text  # a `crnn` log record: the CLI shows it on stderr


def test_a_bad_class_or_duplicate_is_reported(fresh_plugins):
    class BadClass:
        @hookimpl
        def register_init_strategies(self, register):
            register(LSTMCell)  # a Cell, not an InitStrategy

    class Duplicate:
        @hookimpl
        def register_cells(self, register):
            register(TinyCell, name="lstm")

    fresh_plugins.register(BadClass(), name="badclass")
    fresh_plugins.register(Duplicate(), name="dup")
    assert "not a subclass of crnn_core.interfaces.init_strategy.InitStrategy" in fresh_plugins.info["badclass"].errors[0]
    assert "duplicate cell 'lstm'" in fresh_plugins.info["dup"].errors[0]
    assert fresh_plugins.registry("cells").get("lstm").cls is LSTMCell


def _fake_entry_points(monkeypatch, *eps):
    real = importlib.metadata.entry_points

    def entry_points(**kwargs):
        if kwargs.get("group") == "crnn":
            return list(eps)
        return real(**kwargs)

    monkeypatch.setattr(importlib.metadata, "entry_points", entry_points)


def test_import_failure_is_reported_not_fatal(monkeypatch, caplog):
    module = types.ModuleType("crnn_test_good_plugin")
    module.register_cells = hookimpl(lambda register: register(TinyCell))
    monkeypatch.setitem(sys.modules, "crnn_test_good_plugin", module)
    _fake_entry_points(
        monkeypatch,
        importlib.metadata.EntryPoint("ghost", "crnn_test_no_such_module", "crnn"),
        importlib.metadata.EntryPoint("good", "crnn_test_good_plugin", "crnn"),
    )
    system = PluginSystem().fill()
    assert not system.info["ghost"].ok
    assert "import failed: ModuleNotFoundError" in system.info["ghost"].errors[0]
    assert "tiny" in system.registry("cells")  # the good plugin still loads
    assert "plugin 'ghost'" in caplog.text


def test_strict_mode_makes_failures_fatal(monkeypatch):
    _fake_entry_points(monkeypatch, importlib.metadata.EntryPoint("ghost", "crnn_test_no_such_module", "crnn"))
    monkeypatch.setenv("CRNN_PLUGINS_STRICT", "1")
    with pytest.raises(PluginError, match="plugin 'ghost'"):
        PluginSystem()


def test_no_plugins_env_skips_third_party(monkeypatch):
    _fake_entry_points(monkeypatch, importlib.metadata.EntryPoint("ghost", "crnn_test_no_such_module", "crnn"))
    monkeypatch.setenv("CRNN_NO_PLUGINS", "1")
    system = PluginSystem()
    assert "ghost" not in system.info
    assert all(info.builtin for info in system.info.values())


def test_plugins_command_lists_failures(monkeypatch, runner):
    _fake_entry_points(monkeypatch, importlib.metadata.EntryPoint("ghost", "crnn_test_no_such_module", "crnn"))
    plugins_module.reset_plugins(PluginSystem())
    try:
        result = invoke(runner, ["plugins", "--json"])
        rows = {row["name"]: row for row in json.loads(result.stdout)}
        assert rows["ghost"]["status"] == "failed"
        assert rows["crnn_plugins.fastweights"]["status"] == "ok"
        assert rows["crnn_plugins.fastweights"]["hooks"] == ["register_cells"]
        text = invoke(runner, ["plugins"]).stdout
        assert re.search(r"ghost .*FAILED", text)
    finally:
        plugins_module.reset_plugins(None)


def test_every_hook_is_documented():
    text = DOCS.read_text()
    hooks = [name for name, obj in inspect.getmembers(hookspecs) if hasattr(obj, "crnn_spec")]
    assert set(hooks) == {
        "register_cells",
        "register_init_strategies",
        "register_context_networks",
        "register_tasks",
        "register_experiments",
        "register_commands",
    }
    for name in hooks:
        assert f"### `{name}" in text, f"docs/plugins.md has no section for hook {name}"


def test_base_classes_are_documented():
    for cls in (Cell, InitStrategy):
        for name, member in vars(cls).items():
            if getattr(member, "__isabstractmethod__", False):
                assert (member.__doc__ or (member.fget.__doc__ if isinstance(member, property) else "")), name


def test_a_component_whose_constructor_raises_is_named(fresh_plugins, runner, tmp_path):
    class Exploding(TinyCell):
        """A cell whose constructor fails."""

        name = "exploding"

        def __init__(self, input_size, options):
            raise RuntimeError("no GPU budget")

    class P:
        @hookimpl
        def register_cells(self, register):
            register(Exploding)

    fresh_plugins.register(P(), name="exploding-plugin")
    result = invoke(runner, ["run", "--cell", "exploding", "--init", "zero", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2
    assert "cell 'exploding'" in result.stderr and "RuntimeError: no GPU budget" in result.stderr
    assert "Traceback" not in result.stderr
