"""crnn: a PyTorch framework for Contextual RNNs (Wenke & Fleming, 2019).

One import for users and plugin authors:

* layers: ``ContextualRNN`` (a zero, free or learned initial state for any recurrent
  module, ``torch.nn.LSTM``/``GRU`` included) and the layers plugins provide through the
  ``crnn.layers`` entry points (the built-in ``FastWeights`` layer and its functional
  ``fastweights_unroll``);
* training: ``build_model`` / ``ModelSpec`` (a registered task, cell and init strategy),
  ``fit`` with ``TrainConfig`` and ``Callback`` s, ``RunConfig`` / ``RunDirWriter`` / ``load_run``
  for run directories;
* plugins: ``hookimpl``, the component base classes, ``option`` / ``require`` for options.

See docs/python-api.md for worked examples and docs/plugins.md for the plugin contract.
"""

from __future__ import annotations

import importlib.metadata
from typing import Any

from .cell import Cell, State
from .context import ContextNetwork
from .contextual import ContextualRNN, TorchRNN
from .env import CrnnWarning, env_flag
from .errors import CheckpointError, ConfigError, CrnnError, PluginError
from .hookspecs import hookimpl
from .init_strategy import InitStrategy
from .model import Built, ModelSpec, TaskModel, build_model
from .options import NoOptions, option, require
from .plugins import PluginSystem, get_plugins
from .run import RunConfig, RunDirWriter, load_run
from .task import Batch, Rollout, Task, TaskModule
from .train import Callback, Interrupted, Loop, NonFinite, StopOnSignal, TrainConfig, TrainState, evaluate, fit

#: Entry-point group of the layers re-exported here (``from crnn_core import FastWeights``).
LAYERS_GROUP = "crnn.layers"


def _layer_entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=LAYERS_GROUP)}


def __getattr__(name: str) -> Any:
    """A layer some plugin distribution declares under ``crnn.layers`` (loaded on first access)."""
    ep = _layer_entry_points().get(name)
    if ep is None:
        raise AttributeError(f"module 'crnn_core' has no attribute {name!r}")
    value = ep.load()
    globals()[name] = value
    return value


__all__ = [
    "Batch",
    "Built",
    "Callback",
    "Cell",
    "CheckpointError",
    "ConfigError",
    "ContextNetwork",
    "ContextualRNN",
    "CrnnError",
    "CrnnWarning",
    "InitStrategy",
    "Interrupted",
    "Loop",
    "ModelSpec",
    "NoOptions",
    "NonFinite",
    "PluginError",
    "PluginSystem",
    "Rollout",
    "RunConfig",
    "RunDirWriter",
    "State",
    "StopOnSignal",
    "Task",
    "TaskModel",
    "TaskModule",
    "TorchRNN",
    "TrainConfig",
    "TrainState",
    "build_model",
    "env_flag",
    "evaluate",
    "fit",
    "get_plugins",
    "hookimpl",
    "load_run",
    "option",
    "require",
    *sorted(_layer_entry_points()),
]
