"""Plugin discovery and the component registries.

Every plugin is an entry point in group ``crnn``. Those of this distribution (``crnn``)
are the built-ins: they are always loaded, first, and reported as built-in; all others
are third-party plugins. Both are registered with one pluggy manager, through the same
hooks. Loading is safe: a plugin that fails to import, or whose hook raises or registers
something invalid, is recorded as failed and reported once (a ``crnn`` log record, shown
on stderr by the CLI); everything else keeps working.

Loading is all or nothing per plugin: a plugin that fails is rolled back (its
components and commands removed), a command name that exists already is refused, two
packages that publish the same entry-point name are both refused, and a plugin import
that takes longer than a few seconds is named on stderr while it goes on.

Environment variables (read with ``env.env_flag``):
  CRNN_PLUGINS_STRICT=1   make any plugin failure fatal (for plugin authors' CI)
  CRNN_NO_PLUGINS=1       do not load third-party plugins (built-ins only)
  CRNN_PLUGIN_SLOW_SECONDS  after how long a plugin import is reported as slow (default 5)
"""

from __future__ import annotations

import importlib.metadata
import inspect
import os
import threading
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from ..base.env import env_flag, logger, package_version
from ..base.errors import PluginError, closest, first_line, show_traceback
from ..interfaces.experiment import Experiment
from ..interfaces.kinds import KINDS
from .registry import Registry

#: The distribution whose ``crnn`` entry points are the built-ins (and their provider name).
BUILTIN_PROVIDER = "crnn"

#: Entry-point group of plugins that only add commands or experiments: loaded when the command
#: line lists or runs commands, or an experiment is looked up, never for a component lookup.
COMMANDS_GROUP = f"{hookspecs.PROJECT}.commands"


def builtin_entry_points(group: str | None = None) -> list[importlib.metadata.EntryPoint]:
    """The entry points of this distribution in ``group`` (default: the component group ``crnn``
    and then :data:`COMMANDS_GROUP`): the built-in plugins, in declaration order."""
    groups = (group,) if group else (hookspecs.PROJECT, COMMANDS_GROUP)
    try:
        dist = importlib.metadata.distribution(BUILTIN_PROVIDER)
    except importlib.metadata.PackageNotFoundError:
        return []
    return [ep for g in groups for ep in dist.entry_points if ep.group == g]


def _info_of(ep: importlib.metadata.EntryPoint, builtin: bool) -> "PluginInfo":
    dist = getattr(ep, "dist", None)
    package = dist.metadata["Name"] if dist is not None else "?"
    version = dist.version if dist is not None else "?"
    return PluginInfo(ep.name, package, version, ep.value, builtin)


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
        self._experiments: dict[str, Experiment] = {}
        self._filled = False
        self._third_party = load_entry_points and not env_flag("CRNN_NO_PLUGINS")
        self._commands_loaded = False
        self._commands_added: set[int] = set()
        self._registered: dict[str, list[tuple[Registry | None, str, Any]]] = {}  # plugin -> what it registered
        self.command_providers: dict[str, str] = {}  # command name -> plugin package that added it
        self._load_group(hookspecs.PROJECT)

    # -- loading -----------------------------------------------------------------
    def _load_group(self, group: str) -> None:
        """The built-ins of entry-point ``group``, then (unless switched off) the third-party plugins in it."""
        builtins = builtin_entry_points(group)
        for ep in builtins:
            self._load(ep, _info_of(ep, builtin=True))
        if self._third_party:
            self._load_entry_points(exclude={(ep.name, ep.value) for ep in builtins}, group=group)

    def load_command_plugins(self) -> "PluginSystem":
        """Load the plugins of :data:`COMMANDS_GROUP` (once), filling their experiments if the registries are filled."""
        if not self._commands_loaded:
            self._commands_loaded = True
            before = set(self.info)
            self._load_group(COMMANDS_GROUP)
            if self._filled:
                for name in [name for name in self.info if name not in before]:
                    self._fill_from(name)
        return self

    @property
    def experiments(self) -> dict[str, Experiment]:
        """The registered experiment grids by name (loading the command plugins first)."""
        self.load_command_plugins()
        self.fill()
        return self._experiments

    def _load_entry_points(self, exclude: set[tuple[str, str]], group: str = hookspecs.PROJECT) -> None:
        by_name: dict[str, list[tuple[Any, PluginInfo]]] = {}
        for ep in sorted(importlib.metadata.entry_points(group=group), key=lambda e: e.name):
            if (ep.name, ep.value) in exclude:  # the built-ins, loaded already
                continue
            info = _info_of(ep, builtin=False)
            same = by_name.setdefault(ep.name, [])
            if not any(other.package == info.package and other.module == ep.value for _ep, other in same):
                same.append((ep, info))  # (a distribution found twice on sys.path lists its entry points twice)
        for name, candidates in by_name.items():
            if len(candidates) > 1:  # which one wins would be an accident of sys.path order: neither does
                packages = " and ".join(f"'{info.package}' ({info.module})" for _ep, info in candidates)
                for i, (_ep, info) in enumerate(candidates):
                    self.info[name if i == 0 else f"{name} [{info.package}]"] = info
                    self._fail(info, f"entry-point name clash: '{name}' is published by both {packages}; uninstall one")
                continue
            self._load(*candidates[0])

    def _load(self, ep: importlib.metadata.EntryPoint, info: PluginInfo) -> None:
        try:
            with _slow_import_notice(info):
                module = ep.load()
        except BaseException as exc:  # noqa: BLE001 - a plugin may raise anything on import, sys.exit() too
            if isinstance(exc, KeyboardInterrupt):
                raise
            self.info[ep.name] = info
            self._fail(info, f"import failed: {type(exc).__name__}: {exc}", exc)
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
        problem = _hook_problem(plugin)
        if problem is not None:
            self.info[name] = info
            self._fail(info, f"registration failed: {problem}")
            return
        try:
            self.pm.register(plugin, name=name)
        except Exception as exc:  # pluggy validation errors, bad hook names ...
            self.info[name] = info
            self._fail(info, f"registration failed: {type(exc).__name__}: {first_line(exc, empty='')}", exc)
            return
        info.hooks = sorted(impl.name for impl in _hookcallers(self.pm, plugin))
        self.info[name] = info

    def _fail(self, info: PluginInfo, message: str, exc: BaseException | None = None) -> None:
        info.errors.append(message)
        self._roll_back(info)
        text = f"crnn: plugin '{info.name}' ({info.package}) failed: {message}"
        if exc is not None:
            show_traceback(exc)  # CRNN_DEBUG=1: the plugin's own traceback
        if env_flag("CRNN_PLUGINS_STRICT"):
            raise PluginError(text + " [CRNN_PLUGINS_STRICT is set]")
        logger.error(text)

    def _roll_back(self, info: PluginInfo) -> None:
        """Remove every component a failed plugin registered, so nothing of it stays usable."""
        for key, other in self.info.items():
            if other is info:
                for registry, name, obj in self._registered.pop(key, []):
                    if registry is None:
                        self._experiments.pop(name, None)
                    else:
                        registry.unregister(name, obj)

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
        done = self._registered.setdefault(plugin_name, [])
        hooks: list[tuple[str, Registry | None]] = [(k.hook, self.registries[k.plural]) for k in KINDS]
        hooks.append(("register_experiments", None))  # None: the experiments' table
        for hook_name, registry in hooks:
            impl = _impl_of(self.pm, hook_name, plugin_name)
            if impl is None:
                continue

            def register(obj: Any, name: str | None = None, _r: Registry | None = registry) -> None:
                if _r is None:
                    self._register_experiment(obj, provider)
                    done.append((None, obj.name, obj))
                else:
                    done.append((_r, _r.register(obj, provider=provider, name=name), obj))

            try:
                impl(register=register)
            except (Exception, SystemExit) as exc:  # noqa: BLE001
                self._fail(info, f"{hook_name} raised {type(exc).__name__}: {exc}", exc)  # rolls back all of it
                return

    def _register_experiment(self, experiment: Any, provider: str) -> None:
        if not isinstance(experiment, Experiment):
            raise PluginError(f"plugin '{provider}' registered {experiment!r} as an experiment, "
                              "but it is not a crnn_core.interfaces.experiment.Experiment")
        if experiment.name in self._experiments:
            raise PluginError(f"duplicate experiment '{experiment.name}'")
        self._experiments[experiment.name] = experiment

    def add_commands(self, cli: Any) -> None:
        """Call every ``register_commands`` hook once for ``cli``, isolating failures.

        A plugin may only add commands: one that replaces an existing command (a built-in
        such as ``run``, or another plugin's) is refused, naming both providers, and a
        failing plugin's commands are all removed again.
        """
        if id(cli) in self._commands_added:
            return
        self.load_command_plugins()
        self._commands_added.add(id(cli))
        for name, info in list(self.info.items()):
            impl = _impl_of(self.pm, "register_commands", name) if info.ok else None
            if impl is None:
                continue
            before = dict(cli.commands)
            known = set(cli.list_commands(None))  # with the commands a lazy group imports only on use
            try:
                impl(cli=cli)
            except (Exception, SystemExit) as exc:  # noqa: BLE001
                _restore_commands(cli, before)
                self._fail(info, f"register_commands raised {type(exc).__name__}: {exc}", exc)
                continue
            replaced = sorted(k for k in known | set(before) if k in cli.commands and cli.commands[k] is not before.get(k))
            if replaced:
                _restore_commands(cli, before)
                owner = self.command_providers.get(replaced[0], BUILTIN_PROVIDER)
                self._fail(info, f"register_commands: command '{replaced[0]}' already exists (provided by '{owner}'); "
                                 f"'{info.package}' may add commands but not replace them")
                continue
            for added in set(cli.commands) - set(before):
                self.command_providers[added] = info.package

    def registry(self, list_name: str) -> Registry:
        """The registry of one kind, by its plural or scope: ``cells`` or ``cell``, ``inits`` ... (``kinds.KINDS``)."""
        from ..interfaces.kinds import kind_of

        self.fill()
        return self.registries[kind_of(list_name).plural]

    def provider_of(self, cls: type) -> dict[str, str]:
        """Package and version behind a registered class (for plugins.json)."""
        module = cls.__module__
        for info in self.info.values():
            if module == info.module or module.startswith(info.module + "."):
                return {"package": info.package, "version": info.version, "module": module}
        top = module.split(".")[0]
        return {"package": top, "version": package_version(top), "module": module}


def _restore_commands(cli: Any, before: dict[str, Any]) -> None:
    cli.commands.clear()
    cli.commands.update(before)


HOOK_NAMES = tuple(name for name, obj in vars(hookspecs).items() if hasattr(obj, f"{hookspecs.PROJECT}_spec"))


def _hook_problem(plugin: object) -> str | None:
    """A mistake in how ``plugin`` declares its hooks, in words, or None.

    pluggy silently ignores a hook function without ``@hookimpl`` and accepts a marked
    function with an unknown hook name; both would make a plugin that loads "ok" and
    provides nothing. Arguments are checked against the hook's, naming the one that differs.
    """
    marker = f"{hookspecs.PROJECT}_impl"
    for attr in dir(plugin):
        if not attr.startswith("register"):
            continue
        try:
            fn = getattr(plugin, attr)
        except Exception:  # noqa: BLE001 - a property that raises is not a hook
            continue
        if not callable(fn) or isinstance(fn, type):
            continue
        marked = hasattr(fn, marker)
        if attr in HOOK_NAMES and not marked:
            return (f"{attr} is not marked with @crnn_core.hookimpl, so it would never be called "
                    "(add the decorator: from crnn_core import hookimpl)")
        if marked and attr not in HOOK_NAMES:
            close = closest(attr, HOOK_NAMES)
            hint = f"; did you mean '{close}'?" if close else f"; the hooks are: {', '.join(HOOK_NAMES)}"
            return f"@hookimpl function {attr} is not a crnn hook{hint}"
        if marked:
            expected = inspect.signature(getattr(hookspecs, attr)).parameters
            try:
                params = [p for p in inspect.signature(fn).parameters.values()
                          if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
            except (TypeError, ValueError):
                continue
            extra = [p.name for p in params if p.name not in expected and p.default is p.empty]
            if extra:
                wanted = ", ".join(expected)
                return (f"hook {attr}({', '.join(p.name for p in params)}): argument '{extra[0]}' is not one that "
                        f"crnn passes; the hook's arguments are ({wanted}): rename it")
    return None


class _slow_import_notice:
    """While a plugin imports, say on stderr which one it is once it takes longer than a few seconds."""

    def __init__(self, info: PluginInfo) -> None:
        self.info = info
        try:
            self.delay = float(os.environ.get("CRNN_PLUGIN_SLOW_SECONDS", "5"))
        except ValueError:
            self.delay = 5.0
        self.timer: threading.Timer | None = None

    def _say(self) -> None:
        logger.warning(f"crnn: still loading plugin '{self.info.name}' ({self.info.package}, {self.info.module}) after "
                       f"{self.delay:g}s; Ctrl-C to stop, or CRNN_NO_PLUGINS=1 to start without plugins")

    def __enter__(self) -> "_slow_import_notice":
        self.timer = threading.Timer(self.delay, self._say)
        self.timer.daemon = True
        self.timer.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.timer is not None:
            self.timer.cancel()


def _impl_of(pm: pluggy.PluginManager, hook_name: str, plugin_name: str) -> Any:
    """The function a plugin implements for ``hook_name`` (marked with ``hookimpl``), or None."""
    for impl in getattr(pm.hook, hook_name).get_hookimpls():
        if impl.plugin_name == plugin_name:
            return impl.function
    return None


def _hookcallers(pm: pluggy.PluginManager, plugin: object) -> list[Any]:
    callers = pm.get_hookcallers(plugin) or []
    return list(callers)


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
