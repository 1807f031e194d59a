"""The pluggy hook specifications of the ``crnn`` project (the plugin contract).

One ``register_*`` hook per component kind (``crnn_core.interfaces.kinds.KINDS``): ``register_cells``,
``register_init_strategies``, ``register_context_networks`` and ``register_tasks``. Each
receives a ``register(cls, name=None)`` callback; call it once per component the plugin
provides. ``register_experiments`` adds the paper-style grids that ``crnn reproduce``
runs, and ``register_commands`` adds CLI sub-commands. Every hook is documented in
docs/plugins.md.
"""

from __future__ import annotations

from typing import Any, Callable

import pluggy

from ..interfaces.kinds import KINDS, Kind

PROJECT = "crnn"  # pluggy project name and entry-point group

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

Register = Callable[..., None]


def _register_hook(kind: Kind) -> Callable[[Register], None]:
    def hook(register: Register) -> None:
        pass

    hook.__name__ = hook.__qualname__ = kind.hook
    hook.__doc__ = (f"Register {kind.base.__name__} subclasses ({kind.plural}): "
                    f"``register(MyClass)`` or ``register(MyClass, name=\"mine\")``.")
    return hookspec(hook)


for _kind in KINDS:
    globals()[_kind.hook] = _register_hook(_kind)


@hookspec
def register_experiments(register: Register) -> None:
    """Register experiment grids for ``crnn reproduce``: ``register(crnn_core.interfaces.experiment.Experiment(...))``."""


@hookspec
def register_commands(cli: Any) -> None:
    """Add sub-commands to the ``crnn`` click group: ``@cli.command() def mine(): ...``."""
