"""Registries: duplicates name both providers, base classes are checked, unknown names get a suggestion."""

import pytest

from crnn_core import Cell, ConfigError, PluginError, Task
from crnn_core.plugin_manager.registry import Registry
from crnn_plugins.cells.fastweights import FastWeightsCell
from crnn_plugins.cells.lstm import LSTMCell


def test_register_and_get():
    reg = Registry("cell", Cell, "cells")
    reg.register(FastWeightsCell, provider="crnn")
    entry = reg.get("fastweights")
    assert entry.cls is FastWeightsCell and entry.provider == "crnn"
    assert entry.doc.startswith("Fast-weights RNN")
    assert "fastweights" in reg and len(reg) == 1


def test_duplicate_names_both_providers():
    reg = Registry("cell", Cell, "cells")
    reg.register(FastWeightsCell, provider="crnn")
    with pytest.raises(PluginError) as info:
        reg.register(LSTMCell, provider="other-pkg", name="fastweights")
    message = str(info.value)
    assert "duplicate cell 'fastweights'" in message
    assert "'crnn'" in message and "'other-pkg'" in message
    assert reg.get("fastweights").cls is FastWeightsCell  # the first registration stays


def test_base_class_is_checked():
    reg = Registry("task", Task, "tasks")
    with pytest.raises(PluginError, match="not a subclass of crnn_core.interfaces.task.Task"):
        reg.register(LSTMCell, provider="bad")
    with pytest.raises(PluginError, match="not a subclass"):
        reg.register(object(), provider="bad")  # type: ignore[arg-type]


def test_unknown_name_suggests():
    reg = Registry("cell", Cell, "cells")
    reg.register(FastWeightsCell, provider="crnn")
    with pytest.raises(ConfigError) as info:
        reg.get("fastweight")
    assert str(info.value) == "Unknown cell 'fastweight'. Did you mean 'fastweights'? (see: crnn list cells)"
    with pytest.raises(ConfigError) as info:
        reg.get("transformer")
    assert "Did you mean" not in str(info.value)
