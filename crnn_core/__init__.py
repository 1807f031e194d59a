"""crnn: a PyTorch framework for Contextual RNNs (Wenke & Fleming, 2019).

The public plugin API: ``hookimpl`` and the component base classes. A plugin module
implements some of the hooks in ``crnn_core.hookspecs`` and is published under the
``crnn`` entry-point group.
"""

from .cell import Cell, State
from .context import ContextNetwork
from .errors import CheckpointError, ConfigError, CrnnError, PluginError
from .hookspecs import hookimpl
from .init_strategy import InitStrategy
from .options import NoOptions, option, require
from .task import Batch, Rollout, Task, TaskModule

__all__ = [
    "Batch",
    "Cell",
    "CheckpointError",
    "ConfigError",
    "ContextNetwork",
    "CrnnError",
    "InitStrategy",
    "NoOptions",
    "PluginError",
    "Rollout",
    "State",
    "Task",
    "TaskModule",
    "hookimpl",
    "option",
    "require",
]
