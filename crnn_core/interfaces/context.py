"""The ContextNetwork interface: maps a task's context features to a vector."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

from torch import Tensor, nn

from .options import NoOptions


class ContextNetwork(nn.Module, ABC):
    """Base class of every context-network plugin.

    Constructed as ``ContextNetwork(in_features, options)``; must set
    ``self.out_features`` (the width of its output) in ``__init__``.
    """

    #: The registry key (``crnn list``, ``--context NAME``); ``register(cls)`` uses it.
    name: ClassVar[str]
    #: A dataclass of ``option(...)`` fields set with ``--set context.KEY=VALUE``; an instance is passed to the constructor.
    Options: ClassVar[type] = NoOptions
    #: True if each output row depends on the same input row only (no batch statistics): a
    #: task's context table may then go through the network once per distinct row (TaskModel).
    rowwise: ClassVar[bool] = False

    def __init__(self, in_features: int, options: object) -> None:
        super().__init__()
        self.in_features = in_features
        self.options = options
        self.out_features = in_features

    @abstractmethod
    def forward(self, features: Tensor) -> Tensor:
        """``[B, in_features] -> [B, out_features]``."""
