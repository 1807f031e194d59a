"""crnn: a PyTorch framework for Contextual RNNs (Wenke & Fleming, 2019).

One import for users and plugin authors:

* layers: ``ContextualRNN`` (a zero, free or learned initial state for any recurrent
  module, ``torch.nn.LSTM``/``GRU`` included) and the layers plugins provide through the
  ``crnn.layers`` entry points (the built-in ``FastWeights`` layer and its functional
  ``fastweights_unroll``);
* training: ``build_model`` / ``ModelSpec`` (a registered task, cell and init strategy),
  ``fit`` with ``TrainConfig`` and ``Callback`` s, ``RunConfig`` / ``RunDirWriter`` / ``load_run``
  for run directories, ``export_safetensors`` for sharing weights (``load_run`` loads the file);
* plugins: ``hookimpl``, the component base classes, ``option`` / ``require`` for options.

The names are imported on first use (PEP 562), so that ``import crnn_core`` itself is
light: the command line installs its signal handlers before PyTorch is imported
(``crnn_core/entry.py``). Type checkers see them through the ``TYPE_CHECKING`` imports.
Importing it makes ``torch.ops.crnn.*`` resolvable once torch is imported (``torch_ops``:
a saved ``torch.export`` program loads in a fresh process after ``import crnn_core``).
See docs/python-api.md for worked examples and docs/plugins.md for the plugin contract.
"""

from __future__ import annotations

import importlib.metadata
from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .cell import Cell, State
    from .context import ContextNetwork
    from .contextual import ContextualRNN, TorchRNN
    from .env import CrnnWarning, env_flag
    from .errors import CheckpointError, ConfigError, CrnnError, PluginError
    from .hookspecs import hookimpl
    from .init_strategy import InitStrategy
    from .loggers import TensorBoardLogger
    from .model import Built, ModelSpec, TaskModel, build_model
    from .options import NoOptions, option, require
    from .plugins import PluginSystem, get_plugins
    from .run import RunConfig, RunDirWriter, load_run
    from .task import Batch, Rollout, Task, TaskModule
    from .train import Callback, Interrupted, Loop, NonFinite, StopOnSignal, TrainConfig, TrainState, evaluate, fit
    from .weights import export_safetensors

#: public name -> the submodule that defines it
_EXPORTS = {
    "Cell": "cell", "State": "cell",
    "ContextNetwork": "context",
    "ContextualRNN": "contextual", "TorchRNN": "contextual",
    "CrnnWarning": "env", "env_flag": "env",
    "CheckpointError": "errors", "ConfigError": "errors", "CrnnError": "errors", "PluginError": "errors",
    "hookimpl": "hookspecs",
    "InitStrategy": "init_strategy",
    "TensorBoardLogger": "loggers",
    "Built": "model", "ModelSpec": "model", "TaskModel": "model", "build_model": "model",
    "NoOptions": "options", "option": "options", "require": "options",
    "PluginSystem": "plugins", "get_plugins": "plugins",
    "RunConfig": "run", "RunDirWriter": "run", "load_run": "run",
    "Batch": "task", "Rollout": "task", "Task": "task", "TaskModule": "task",
    "Callback": "train", "Interrupted": "train", "Loop": "train", "NonFinite": "train",
    "StopOnSignal": "train", "TrainConfig": "train", "TrainState": "train", "evaluate": "train", "fit": "train",
    "export_safetensors": "weights",
}

#: Entry-point group of the layers re-exported here (``from crnn_core import FastWeights``).
LAYERS_GROUP = "crnn.layers"


def _layer_entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=LAYERS_GROUP)}


def __getattr__(name: str) -> Any:
    """A public name of the core (imported on first use), or a layer some plugin distribution
    declares under ``crnn.layers`` (loaded on first access)."""
    if name in _EXPORTS:
        value = getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    else:
        ep = _layer_entry_points().get(name)
        if ep is None:
            raise AttributeError(f"module 'crnn_core' has no attribute {name!r}")
        value = ep.load()
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})


__all__ = sorted(_EXPORTS) + sorted(_layer_entry_points())

from .torch_ops import install as _install_torch_ops  # noqa: E402 - torch.ops.crnn.* resolvable (torch_ops.py)

_install_torch_ops()
