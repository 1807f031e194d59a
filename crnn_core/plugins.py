"""Plugin discovery and the component registries.

Built-in plugins (modules of ``crnn_plugins``) and third-party plugins (entry points
in group ``crnn``) are registered with one pluggy manager. Loading is safe: a plugin
that fails to import, or whose hook raises or registers something invalid, is
recorded as failed and reported once on stderr; everything else keeps working.

Environment variables:
  CRNN_PLUGINS_STRICT=1   make any plugin failure fatal (for plugin authors' CI)
  CRNN_NO_PLUGINS=1       do not load third-party plugins (built-ins only)
"""

from __future__ import annotations

import importlib
import importlib.metadata
import os
import sys
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .cell import Cell
from .context import ContextNetwork
from .errors import PluginError
from .init_strategy import InitStrategy
from .registry import Registry
from .task import Task

BUILTIN_MODULES = (
    "crnn_plugins.lstm",
    "crnn_plugins.fastweights",
    "crnn_plugins.zero_init",
    "crnn_plugins.free_init",
    "crnn_plugins.learned_init",
    "crnn_plugins.identity_context",
    "crnn_plugins.linear_context",
    "crnn_plugins.mlp_context",
    "crnn_plugins.art",
    "crnn_plugins.lcd",
)
BUILTIN_PROVIDER = "crnn"

#: hook name -> (registry attribute, base class, kind, `crnn list` name)
KINDS = {
    "register_cells": ("cells", Cell, "cell", "cells"),
    "register_init_strategies": ("inits", InitStrategy, "init strategy", "inits"),
    "register_context_networks": ("contexts", ContextNetwork, "context network", "contexts"),
    "register_tasks": ("tasks", Task, "task", "tasks"),
}


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class PluginInfo:
    """What ``crnn plugins`` reports about one plugin."""

    name: str
    package: str
    version: str
    module: str
    builtin: bool
    hooks: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.errors

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "package": self.package,
            "version": self.version,
            "module": self.module,
            "builtin": self.builtin,
            "hooks": self.hooks,
            "status": "ok" if self.ok else "failed",
            "errors": self.errors,
        }


class PluginSystem:
    """The plugin manager plus the registries filled from it."""

    def __init__(self, load_entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self.cells: Registry = Registry("cell", Cell, "cells")
        self.inits: Registry = Registry("init strategy", InitStrategy, "inits")
        self.contexts: Registry = Registry("context network", ContextNetwork, "contexts")
        self.tasks: Registry = Registry("task", Task, "tasks")
        self._filled = False
        version = _version("crnn")
        for module_name in BUILTIN_MODULES:
            module = importlib.import_module(module_name)
            self._add(module, module_name, PluginInfo(module_name, "crnn", version, module_name, True))
        if load_entry_points and not _truthy("CRNN_NO_PLUGINS"):
            self._load_entry_points()

    # -- loading -----------------------------------------------------------------
    def _load_entry_points(self) -> None:
        for ep in sorted(importlib.metadata.entry_points(group=hookspecs.PROJECT), key=lambda e: e.name):
            dist = getattr(ep, "dist", None)
            package = dist.metadata["Name"] if dist is not None else "?"
            version = dist.version if dist is not None else "?"
            info = PluginInfo(ep.name, package, version, ep.value, False)
            try:
                module = ep.load()
            except BaseException as exc:  # noqa: BLE001 - a plugin may raise anything on import, sys.exit() too
                if isinstance(exc, KeyboardInterrupt):
                    raise
                self.info[ep.name] = info
                self._fail(info, f"import failed: {type(exc).__name__}: {exc}")
                continue
            self._add(module, ep.name, info)

    def register(self, plugin: object, name: str | None = None, package: str = "(registered in code)") -> None:
        """Register a plugin object or module directly (tests, notebooks, embedding code)."""
        name = name or getattr(plugin, "__name__", None) or type(plugin).__name__
        self._add(plugin, name, PluginInfo(name, package, "", getattr(plugin, "__name__", name), False))
        if self._filled:
            self._fill_from(name)

    def _add(self, plugin: object, name: str, info: PluginInfo) -> None:
        if name in self.info and self.info[name].ok:
            self._fail(info, f"a plugin named '{name}' is already registered")
            return
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # pluggy validation errors, bad hook names ...
            self.info[name] = info
            self._fail(info, f"registration failed: {type(exc).__name__}: {exc}")
            return
        info.hooks = sorted(impl.name for impl in _hookcallers(self.pm, plugin))
        self.info[name] = info

    def _fail(self, info: PluginInfo, message: str) -> None:
        info.errors.append(message)
        text = f"crnn: plugin '{info.name}' ({info.package}) failed: {message}"
        if _truthy("CRNN_PLUGINS_STRICT"):
            raise PluginError(text + " [CRNN_PLUGINS_STRICT is set]")
        print(text, file=sys.stderr)

    # -- registries --------------------------------------------------------------
    def fill(self) -> "PluginSystem":
        """Call every ``register_*`` hook once (idempotent)."""
        if not self._filled:
            self._filled = True
            for name in list(self.info):
                self._fill_from(name)
        return self

    def _fill_from(self, plugin_name: str) -> None:
        info = self.info[plugin_name]
        if self.pm.get_plugin(plugin_name) is None or not info.ok:
            return
        for hook_name, (attr, _base, _kind, _list) in KINDS.items():
            impl = _impl_of(self.pm, hook_name, plugin_name)
            if impl is None:
                continue
            registry: Registry = getattr(self, attr)

            def register(cls: type, name: str | None = None, _r: Registry = registry) -> None:
                _r.register(cls, provider=info.package if not info.builtin else BUILTIN_PROVIDER, name=name)

            try:
                impl(register=register)
            except (Exception, SystemExit) as exc:  # noqa: BLE001
                self._fail(info, f"{hook_name} raised {type(exc).__name__}: {exc}")

    def add_commands(self, cli: Any) -> None:
        """Call every ``register_commands`` hook, isolating failures."""
        for name, info in list(self.info.items()):
            impl = _impl_of(self.pm, "register_commands", name) if info.ok else None
            if impl is None:
                continue
            try:
                impl(cli=cli)
            except (Exception, SystemExit) as exc:  # noqa: BLE001
                self._fail(info, f"register_commands raised {type(exc).__name__}: {exc}")

    def registry(self, list_name: str) -> Registry:
        """The registry for ``cells``, ``inits``, ``contexts`` or ``tasks``."""
        self.fill()
        return {"cells": self.cells, "inits": self.inits, "contexts": self.contexts, "tasks": self.tasks}[list_name]

    def provider_of(self, cls: type) -> dict[str, str]:
        """Package and version behind a registered class (for plugins.json)."""
        module = cls.__module__
        for info in self.info.values():
            if module == info.module or module.startswith(info.module + "."):
                return {"package": info.package, "version": info.version, "module": module}
        top = module.split(".")[0]
        return {"package": top, "version": _version(top), "module": module}


def _impl_of(pm: pluggy.PluginManager, hook_name: str, plugin_name: str) -> Any:
    """The function a plugin implements for ``hook_name`` (marked with ``hookimpl``), or None."""
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        if impl.plugin_name == plugin_name:
            return impl.function
    return None


def _hookcallers(pm: pluggy.PluginManager, plugin: object) -> list[Any]:
    callers = pm.get_hookcallers(plugin) or []
    return list(callers)


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


_SYSTEM: PluginSystem | None = None


def get_plugins() -> PluginSystem:
    """The process-wide plugin system, loaded on first use."""
    global _SYSTEM
    if _SYSTEM is None:
        _SYSTEM = PluginSystem()
    return _SYSTEM.fill()


def reset_plugins(system: PluginSystem | None = None) -> None:
    """Replace (or drop) the process-wide plugin system; for tests."""
    global _SYSTEM
    _SYSTEM = system


