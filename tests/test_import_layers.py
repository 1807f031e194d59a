"""The import layers of crnn_core and crnn_plugins (tests/import_layers.py): one way, no circles,
and the checker itself fails on a planted back-import or circle."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from . import import_layers as layers

ROOT = Path(__file__).resolve().parent.parent


def test_every_module_is_in_a_layer():
    for module in layers.module_names(ROOT):
        layers.level_of(module)  # raises KeyError naming a module no layer holds


def test_no_import_circle():
    found = layers.cycles(layers.import_graph(ROOT))
    assert found == [], "import circles (lazy imports counted): " + "; ".join(" <-> ".join(c) for c in found)


def test_imports_go_down_the_layers():
    problems = layers.layer_violations(layers.import_graph(ROOT))
    assert problems == [], "\n".join(map(str, problems))


def test_the_core_never_imports_a_plugin_module():
    graph = layers.import_graph(ROOT)
    back = sorted((m, t) for m, ts in graph.items() if m.startswith("crnn_core") for t in ts if t.startswith("crnn_plugins"))
    assert back == []


@pytest.fixture()
def copy_of_tree(tmp_path: Path) -> Path:
    for package in layers.PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__", "*.so", "csrc"))
    return tmp_path


def test_checker_finds_a_planted_lazy_back_import(copy_of_tree: Path):
    errors = copy_of_tree / "crnn_core" / "base" / "errors.py"
    errors.write_text(errors.read_text() + "\n\ndef _planted():\n    from ..commandline import main\n    return main\n")
    problems = layers.layer_violations(layers.import_graph(copy_of_tree))
    assert [str(p) for p in problems] == [
        "crnn_core.base.errors imports crnn_core.commandline.main: crnn_core.commandline is above crnn_core.base"]


def test_checker_finds_a_planted_circle_and_independence_breach(copy_of_tree: Path):
    lstm = copy_of_tree / "crnn_plugins" / "cells" / "lstm.py"
    lstm.write_text(lstm.read_text() + "\nfrom crnn_plugins.tasks import art  # planted\n")
    art = copy_of_tree / "crnn_plugins" / "tasks" / "art.py"
    art.write_text(art.read_text() + "\nimport crnn_plugins.cells.lstm  # planted\n")
    graph = layers.import_graph(copy_of_tree)
    assert layers.cycles(graph) == [["crnn_plugins.cells.lstm", "crnn_plugins.tasks.art"]]
    why = {str(p) for p in layers.layer_violations(graph)}
    assert "crnn_plugins.cells.lstm imports crnn_plugins.tasks.art: crnn_plugins.cells and crnn_plugins.tasks are independent" in why


def test_type_checking_imports_do_not_count(tmp_path: Path):
    package = tmp_path / "crnn_core"
    (package / "base").mkdir(parents=True)
    (package / "rundirs").mkdir()
    for path in (package / "__init__.py", package / "base" / "__init__.py", package / "rundirs" / "__init__.py"):
        path.write_text("")
    (package / "rundirs" / "rundir.py").write_text("X = 1\n")
    (package / "base" / "low.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..rundirs.rundir import X\n")
    assert layers.import_graph(tmp_path, ("crnn_core",))["crnn_core.base.low"] == set()
    (package / "base" / "low.py").write_text("try:\n    from ..rundirs.rundir import X\nexcept ImportError:\n    pass\n")
    assert layers.import_graph(tmp_path, ("crnn_core",))["crnn_core.base.low"] == {"crnn_core.rundirs.rundir"}


def test_cycles_on_a_synthetic_graph():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert layers.cycles(graph) == [["a", "b", "c"]]
    assert layers.cycles({"a": {"b"}, "b": set()}) == []
