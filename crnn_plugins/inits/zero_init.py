"""The `zero` init strategy: every state component is a constant (0 by default)."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from crnn_core import InitStrategy, State, hookimpl, option
from crnn_core.interfaces.cell import constant_state


@dataclasses.dataclass
class ZeroOptions:
    value: float = option(0.0, "the constant every state component starts at")


class ZeroInit(InitStrategy):
    """Constant initial state (h0 = 0 by default): the usual RNN baseline, eq. (2a)."""

    name = "zero"
    Options = ZeroOptions

    def forward(self, batch_size: int, context: Tensor | None, *, device, dtype, sample=None) -> State:
        """Each component as a broadcast constant (``constant_state``: one element, no per-example memory)."""
        return {
            name: constant_state(batch_size, shape, self.options.value, device=device, dtype=dtype)
            for name, shape in self.state_spec.items()
        }


@hookimpl
def register_init_strategies(register) -> None:
    register(ZeroInit)
