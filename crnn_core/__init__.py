"""crnn: a PyTorch framework for Contextual RNNs (Wenke & Fleming, 2019).

The public plugin API: ``hookimpl`` and the component base classes. A plugin module
implements some of the hooks in ``crnn_core.hookspecs`` and is published under the
``crnn`` entry-point group.

The names are imported on first use (PEP 562), so that ``import crnn_core`` itself is
light: the command line installs its signal handlers before PyTorch is imported
(``crnn_core/entry.py``).
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

#: public name -> the submodule that defines it
_EXPORTS = {
    "Batch": "task",
    "Cell": "cell",
    "CheckpointError": "errors",
    "ConfigError": "errors",
    "ContextNetwork": "context",
    "CrnnError": "errors",
    "InitStrategy": "init_strategy",
    "NoOptions": "options",
    "PluginError": "errors",
    "Rollout": "task",
    "State": "cell",
    "Task": "task",
    "TaskModule": "task",
    "hookimpl": "hookspecs",
    "option": "options",
    "require": "options",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'crnn_core' has no attribute {name!r}")
    value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
