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
(``crnn_core/commandline/entry.py``). Type checkers see them through the ``TYPE_CHECKING`` imports.
Importing it makes ``torch.ops.crnn.*`` resolvable once torch is imported (``torch_ops``:
a saved ``torch.export`` program loads in a fresh process after ``import crnn_core``).
See docs/python-api.md for worked examples and docs/plugins.md for the plugin contract.
"""

from __future__ import annotations

import importlib.metadata
from importlib import import_module
from typing import TYPE_CHECKING, Any

from . import _moved

_moved.install(_moved.MOVED)  # the module paths of the previous release, with a DeprecationWarning

if TYPE_CHECKING:
    from .interfaces.cell import Cell, State
    from .interfaces.context import ContextNetwork
    from .layers.contextual import ContextualRNN, TorchRNN
    from .base.env import CrnnWarning, env_flag
    from .base.errors import CheckpointError, ConfigError, CrnnError, PluginError
    from .plugin_manager.hookspecs import hookimpl
    from .interfaces.init_strategy import InitStrategy
    from .training.loggers import TensorBoardLogger
    from .layers.model import Built, ModelSpec, TaskModel, build_model
    from .interfaces.options import NoOptions, option, require
    from .plugin_manager.manager import PluginSystem, get_plugins
    from .rundirs.loading import export_safetensors, load_run
    from .rundirs.run import RunConfig, RunDirWriter
    from .interfaces.task import Batch, Rollout, Task, TaskModule
    from .training.train import Callback, Interrupted, Loop, NonFinite, StopOnSignal, TrainConfig, TrainState, evaluate, fit

#: public name -> the submodule that defines it
_EXPORTS = {
    "Cell": "interfaces.cell", "State": "interfaces.cell",
    "ContextNetwork": "interfaces.context",
    "ContextualRNN": "layers.contextual", "TorchRNN": "layers.contextual",
    "CrnnWarning": "base.env", "env_flag": "base.env",
    "CheckpointError": "base.errors", "ConfigError": "base.errors", "CrnnError": "base.errors", "PluginError": "base.errors",
    "hookimpl": "plugin_manager.hookspecs",
    "InitStrategy": "interfaces.init_strategy",
    "TensorBoardLogger": "training.loggers",
    "Built": "layers.model", "ModelSpec": "layers.model", "TaskModel": "layers.model", "build_model": "layers.model",
    "NoOptions": "interfaces.options", "option": "interfaces.options", "require": "interfaces.options",
    "PluginSystem": "plugin_manager.manager", "get_plugins": "plugin_manager.manager",
    "RunConfig": "rundirs.run", "RunDirWriter": "rundirs.run", "load_run": "rundirs.loading",
    "Batch": "interfaces.task", "Rollout": "interfaces.task", "Task": "interfaces.task", "TaskModule": "interfaces.task",
    "Callback": "training.train", "Interrupted": "training.train", "Loop": "training.train", "NonFinite": "training.train",
    "StopOnSignal": "training.train", "TrainConfig": "training.train", "TrainState": "training.train", "evaluate": "training.train", "fit": "training.train",
    "export_safetensors": "rundirs.loading",
}

from .base.torch_ops import LAYERS_GROUP  # noqa: E402 - the entry-point group of the re-exported layers


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

from .base.torch_ops import install as _install_torch_ops  # noqa: E402 - torch.ops.crnn.* resolvable (torch_ops.py)

_install_torch_ops()
