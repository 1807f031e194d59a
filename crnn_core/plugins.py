"""Plugin discovery and the component registries.

Every plugin is an entry point in group ``crnn``. Those of this distribution (``crnn``)
are the built-ins: they are always loaded, first, and reported as built-in; all others
are third-party plugins. Both are registered with one pluggy manager, through the same
hooks. Loading is safe: a plugin that fails to import, or whose hook raises or registers
something invalid, is recorded as failed and reported once (a ``crnn`` log record, shown
on stderr by the CLI); everything else keeps working.

Environment variables (read with ``env.env_flag``):
  CRNN_PLUGINS_STRICT=1   make any plugin failure fatal (for plugin authors' CI)
  CRNN_NO_PLUGINS=1       do not load third-party plugins (built-ins only)
"""

from __future__ import annotations

import importlib.metadata
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from .env import env_flag, logger
from .errors import PluginError
from .kinds import KINDS
from .registry import Registry

#: The distribution whose ``crnn`` entry points are the built-ins (and their provider name).
BUILTIN_PROVIDER = "crnn"


def builtin_entry_points() -> list[importlib.metadata.EntryPoint]:
    """The ``crnn`` entry points of this distribution: the built-in plugins, in declaration order."""
    try:
        dist = importlib.metadata.distribution(BUILTIN_PROVIDER)
    except importlib.metadata.PackageNotFoundError:
        return []
    return [ep for ep in dist.entry_points if ep.group == hookspecs.PROJECT]


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
        """Load the built-ins and, unless ``load_entry_points`` is False or CRNN_NO_PLUGINS is set, third-party plugins."""
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.info: dict[str, PluginInfo] = {}
        self.registries: dict[str, Registry] = {k.plural: Registry(k.noun, k.base, k.plural) for k in KINDS}
        self.experiments: dict[str, Any] = {}  # name -> crnn_core.reproduce.Experiment
        self._filled = False
        self._commands_added: set[int] = set()
        builtins = builtin_entry_points()
        for ep in builtins:
            self._load(ep, builtin=True)
        if load_entry_points and not env_flag("CRNN_NO_PLUGINS"):
            self._load_entry_points(exclude={(ep.name, ep.value) for ep in builtins})

    # -- loading -----------------------------------------------------------------
    def _load_entry_points(self, exclude: set[tuple[str, str]]) -> None:
        seen = set(exclude)
        for ep in sorted(importlib.metadata.entry_points(group=hookspecs.PROJECT), key=lambda e: e.name):
            if (ep.name, ep.value) not in seen:  # a distribution found twice on sys.path lists its entry points twice
                seen.add((ep.name, ep.value))
                self._load(ep, builtin=False)

    def _load(self, ep: importlib.metadata.EntryPoint, builtin: bool) -> None:
        dist = getattr(ep, "dist", None)
        package = dist.metadata["Name"] if dist is not None else "?"
        version = dist.version if dist is not None else "?"
        info = PluginInfo(ep.name, package, version, ep.value, builtin)
        try:
            module = ep.load()
        except BaseException as exc:  # noqa: BLE001 - a plugin may raise anything on import, sys.exit() too
            if isinstance(exc, KeyboardInterrupt):
                raise
            self.info[ep.name] = info
            self._fail(info, f"import failed: {type(exc).__name__}: {exc}")
            return
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
        if env_flag("CRNN_PLUGINS_STRICT"):
            raise PluginError(text + " [CRNN_PLUGINS_STRICT is set]")
        logger.error(text)

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
        provider = BUILTIN_PROVIDER if info.builtin else info.package
        hooks: list[tuple[str, Any]] = [(k.hook, self.registries[k.plural]) for k in KINDS]
        hooks.append(("register_experiments", None))
        for hook_name, registry in hooks:
            impl = _impl_of(self.pm, hook_name, plugin_name)
            if impl is None:
                continue

            def register(obj: Any, name: str | None = None, _r: Registry | None = registry) -> None:
                if _r is None:
                    self._register_experiment(obj, provider)
                else:
                    _r.register(obj, provider=provider, name=name)

            try:
                impl(register=register)
            except (Exception, SystemExit) as exc:  # noqa: BLE001
                self._fail(info, f"{hook_name} raised {type(exc).__name__}: {exc}")

    def _register_experiment(self, experiment: Any, provider: str) -> None:
        from .reproduce import Experiment

        if not isinstance(experiment, Experiment):
            raise PluginError(f"plugin '{provider}' registered {experiment!r} as an experiment, "
                              "but it is not a crnn_core.reproduce.Experiment")
        if experiment.name in self.experiments:
            raise PluginError(f"duplicate experiment '{experiment.name}'")
        self.experiments[experiment.name] = experiment

    def add_commands(self, cli: Any) -> None:
        """Call every ``register_commands`` hook once for ``cli``, isolating failures."""
        if id(cli) in self._commands_added:
            return
        self._commands_added.add(id(cli))
        for name, info in list(self.info.items()):
            impl = _impl_of(self.pm, "register_commands", name) if info.ok else None
            if impl is None:
                continue
            try:
                impl(cli=cli)
            except (Exception, SystemExit) as exc:  # noqa: BLE001
                self._fail(info, f"register_commands raised {type(exc).__name__}: {exc}")

    def registry(self, list_name: str) -> Registry:
        """The registry of one kind, by its plural or scope: ``cells`` or ``cell``, ``inits`` ... (``kinds.KINDS``)."""
        from .kinds import kind_of

        self.fill()
        return self.registries[kind_of(list_name).plural]

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


