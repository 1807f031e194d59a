"""The project's own code imports modules at their current paths, never through the old-path shims.

The shims (``crnn_core/_moved.py``, ``crnn_plugins/_moved.py``) serve code written against the
earlier flat layout, with a ``DeprecationWarning``; the layer check in ``import_layers`` reads
such an import as one of the package itself, so it is checked here by name.
"""

from __future__ import annotations

import ast
from pathlib import Path

from crnn_core._moved import MOVED as CORE_MOVED
from crnn_plugins._moved import MOVED as PLUGINS_MOVED

from .import_layers import _runtime_imports, module_names

ROOT = Path(__file__).resolve().parents[1]
OLD_PATHS = {**CORE_MOVED, **PLUGINS_MOVED}


def old_path_imports(root: Path, old_paths: dict[str, str]) -> list[str]:
    """``module: old.path`` for every import of an old path by a module of the two packages."""
    found = []
    for name, path in module_names(root).items():
        if name.endswith("._moved"):
            continue
        for node in _runtime_imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif node.level == 0 and node.module:
                targets = [node.module, *(f"{node.module}.{alias.name}" for alias in node.names)]
            else:
                continue
            found += [f"{name}: {target}" for target in targets if target in old_paths]
    return found


def test_no_module_imports_an_old_path():
    assert old_path_imports(ROOT, OLD_PATHS) == []


def test_the_check_finds_a_planted_old_path_import(tmp_path):
    package = tmp_path / "crnn_plugins"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "plugin.py").write_text("def f():\n    from crnn_core.resources import check_memory\n")
    (tmp_path / "crnn_core").mkdir()
    (tmp_path / "crnn_core" / "__init__.py").write_text("")
    assert old_path_imports(tmp_path, OLD_PATHS) == ["crnn_plugins.plugin: crnn_core.resources"]
