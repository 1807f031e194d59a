"""The InitStrategy interface: builds a cell's initial state for a batch."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor, nn

from .cell import State
from .options import NoOptions


class InitStrategy(nn.Module, ABC):
    """Base class of every init-strategy plugin.

    Constructed as ``InitStrategy(state_spec, context_size, options)`` where
    ``state_spec`` is the cell's ``state_spec()`` and ``context_size`` the width of
    the context network's output (``None`` when the strategy uses no context).
    """

    #: The registry key (``crnn list``, ``--init NAME``); ``register(cls)`` uses it.
    name: ClassVar[str]
    #: A dataclass of ``option(...)`` fields set with ``--set init.KEY=VALUE``; an instance is passed to the constructor.
    Options: ClassVar[type] = NoOptions
    #: True if ``forward`` needs a context vector (then the task must provide context).
    uses_context: ClassVar[bool] = False
    #: True if, when it does not sample, each example's state depends on its own context row
    #: only: a task's context table may then go through it once per distinct row (TaskModel).
    rowwise: ClassVar[bool] = False

    def __init__(self, state_spec: dict[str, tuple[int, ...]], context_size: int | None, options: object) -> None:
        super().__init__()
        self.state_spec = dict(state_spec)
        self.context_size = context_size
        self.options = options

    @property
    def can_sample(self) -> bool:
        """True if the strategy defines a distribution over initial states (used by ``crnn sample``)."""
        return False

    def samples(self, sample: bool | None) -> bool:
        """Whether ``forward(..., sample=sample)`` draws from the distribution (None: while training)."""
        return (self.training if sample is None else sample) and self.can_sample

    @abstractmethod
    def forward(
        self,
        batch_size: int,
        context: Tensor | None,
        *,
        device: torch.device,
        dtype: torch.dtype,
        sample: bool | None = None,
    ) -> State:
        """The initial state, each component ``[batch_size, *shape]``.

        ``sample``: draw from the strategy's distribution (True), take its mean
        (False), or do what the training mode implies (None: sample while training).
        """
