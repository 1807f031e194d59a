"""The pluggy hook specifications of the ``crnn`` project (the plugin contract).

Each ``register_*`` hook receives a ``register(cls, name=None)`` callback; call it
once per component the plugin provides. Every hook is documented in docs/plugins.md.
"""

from __future__ import annotations

from typing import Callable

import pluggy

PROJECT = "crnn"  # pluggy project name and entry-point group

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[..., None]


@hookspec
def register_cells(register: Register) -> None:
    """Register Cell subclasses: ``register(MyCell)`` or ``register(MyCell, name="mycell")``."""


@hookspec
def register_init_strategies(register: Register) -> None:
    """Register InitStrategy subclasses."""


@hookspec
def register_context_networks(register: Register) -> None:
    """Register ContextNetwork subclasses."""


@hookspec
def register_tasks(register: Register) -> None:
    """Register Task subclasses."""


@hookspec
def register_commands(cli) -> None:  # type: ignore[no-untyped-def]
    """Add sub-commands to the ``crnn`` click group: ``@cli.command() def mine(): ...``."""
