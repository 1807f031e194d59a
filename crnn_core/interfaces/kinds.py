"""The component kinds: the one declaration that registries, hooks, ``--set`` scopes,
the model spec, ``crnn list`` and plot labels are derived from.

Adding a kind here adds its registry, its ``register_*`` hook, its ``--set`` scope,
its ``ModelSpec`` fields (``<scope>`` and ``<scope>_options``) and its ``crnn list``
section; the model assembly in ``model.py`` is the one place that says how the kinds
are joined.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass

from .cell import Cell
from .context import ContextNetwork
from ..base.errors import ConfigError
from .init_strategy import InitStrategy
from .task import Task


@dataclass(frozen=True)
class Kind:
    """One kind of component."""

    scope: str  # `--set` scope, ModelSpec field and config.json key: "cell"
    noun: str  # for messages: "init strategy"
    plural: str  # registry and `crnn list` name: "inits"
    hook: str  # the pluggy hook that registers them: "register_init_strategies"
    base: type  # every registered class subclasses it
    required: bool = True  # False: the ModelSpec field may be None (the context network)


KINDS: tuple[Kind, ...] = (
    Kind("cell", "cell", "cells", "register_cells", Cell),
    Kind("init", "init strategy", "inits", "register_init_strategies", InitStrategy),
    Kind("context", "context network", "contexts", "register_context_networks", ContextNetwork, required=False),
    Kind("task", "task", "tasks", "register_tasks", Task),
)

#: ``--set`` scopes: one per kind, and ``train`` for the training options.
SCOPES: tuple[str, ...] = (*(k.scope for k in KINDS), "train")


def kind_of(name: str) -> Kind:
    """The kind whose ``scope`` or ``plural`` is ``name``."""
    for kind in KINDS:
        if name in (kind.scope, kind.plural):
            return kind
    raise KeyError(name)


def parse_overrides(pairs: typing.Iterable[str]) -> dict[str, dict[str, str]]:
    """Split ``["cell.inner_steps=2", ...]`` into ``{"cell": {"inner_steps": "2"}}`` (scopes: :data:`SCOPES`)."""
    out: dict[str, dict[str, str]] = {scope: {} for scope in SCOPES}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        scope, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise ConfigError(f"--set expects scope.key=value (e.g. cell.inner_steps=2), got '{pair}'")
        if scope not in out:
            raise ConfigError(f"--set '{pair}': unknown scope '{scope}' (choose from {', '.join(SCOPES)})")
        out[scope][name.strip()] = value.strip()
    return out
