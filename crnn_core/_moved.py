"""The module paths crnn had before its layer subpackages, importable for one more release.

``import crnn_core.rundir`` (or ``from crnn_core import rundir``) still works: it warns with a
``DeprecationWarning`` naming the new path and gives the module at that path itself (the same
object, so its private names and ``monkeypatch`` targets are the new module's). ``python -m``
with an old path runs the new module. ``install`` adds the finder once, with
the old paths of one package: ``crnn_core`` calls it with :data:`MOVED`, a plugin package with its own.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import sys
import warnings
from types import CodeType, ModuleType

#: old module path -> the module's path now
MOVED: dict[str, str] = {
    "crnn_core.errors": "crnn_core.base.errors",
    "crnn_core.env": "crnn_core.base.env",
    "crnn_core.resources": "crnn_core.base.resources",
    "crnn_core.signals": "crnn_core.base.signals",
    "crnn_core.options": "crnn_core.interfaces.options",
    "crnn_core.cell": "crnn_core.interfaces.cell",
    "crnn_core.init_strategy": "crnn_core.interfaces.init_strategy",
    "crnn_core.context": "crnn_core.interfaces.context",
    "crnn_core.task": "crnn_core.interfaces.task",
    "crnn_core.contract": "crnn_core.interfaces.contract",
    "crnn_core.kinds": "crnn_core.interfaces.kinds",
    "crnn_core.registry": "crnn_core.plugin_manager.registry",
    "crnn_core.hookspecs": "crnn_core.plugin_manager.hookspecs",
    "crnn_core.plugins": "crnn_core.plugin_manager.manager",
    "crnn_core.plugin_reference": "crnn_core.plugin_manager.reference",
    "crnn_core.contextual": "crnn_core.layers.contextual",
    "crnn_core.model": "crnn_core.layers.model",
    "crnn_core.step": "crnn_core.training.step",
    "crnn_core.distributed": "crnn_core.training.distributed",
    "crnn_core.train": "crnn_core.training.train",
    "crnn_core.loggers": "crnn_core.training.loggers",
    "crnn_core.rundir": "crnn_core.rundirs.rundir",
    "crnn_core.run": "crnn_core.rundirs.run",
    "crnn_core.weights": "crnn_core.rundirs.weights",
    "crnn_core.stats": "crnn_core.experiments.stats",
    "crnn_core.plot": "crnn_core.experiments.plot",
    "crnn_core.reproduce": "crnn_core.experiments.reproduce",
    "crnn_core.ray_grid": "crnn_core.experiments.ray_grid",
    "crnn_core.cli": "crnn_core.commandline.main",
    "crnn_core.entry": "crnn_core.commandline.entry",
    "crnn_core.configfile": "crnn_core.commandline.configfile",
    "crnn_core.generate": "crnn_core.commandline.sample",
}


class _MovedModule(importlib.abc.Loader):
    """Loads an old path as the module at its new path, with a ``DeprecationWarning``."""

    def __init__(self, old: str, new: str) -> None:
        self.old, self.new = old, new

    def _warn(self) -> None:
        warnings.warn(f"{self.old} has moved to {self.new}; import it from there "
                      f"(the old path is removed in the next release)", DeprecationWarning, stacklevel=3)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        return importlib.import_module(self.new)

    def exec_module(self, module: ModuleType) -> None:
        self._warn()

    def get_code(self, fullname: str) -> CodeType | None:
        """For ``python -m <old path>``: the new module's code."""
        self._warn()
        spec = importlib.util.find_spec(self.new)
        loader = spec.loader if spec is not None else None
        return loader.get_code(self.new) if isinstance(loader, importlib.abc.InspectLoader) else None


class _MovedFinder(importlib.abc.MetaPathFinder):
    """Finds the old paths it was given (after every other finder has found nothing)."""

    def __init__(self) -> None:
        self.moved: dict[str, str] = {}

    def find_spec(self, fullname: str, path: object = None, target: object = None) -> importlib.machinery.ModuleSpec | None:
        new = self.moved.get(fullname)
        return None if new is None else importlib.machinery.ModuleSpec(fullname, _MovedModule(fullname, new))


def install(moved: dict[str, str]) -> None:
    """Make the old paths of ``moved`` (old path -> new path) importable; one finder per process."""
    finder = next((f for f in sys.meta_path if isinstance(f, _MovedFinder)), None)
    if finder is None:
        finder = _MovedFinder()
        sys.meta_path.append(finder)
    finder.moved.update(moved)
