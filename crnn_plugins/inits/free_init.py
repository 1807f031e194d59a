"""The `free` init strategy: a learned variable per state component, tiled over the batch."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from crnn_core import InitStrategy, State, hookimpl, option, require


@dataclasses.dataclass
class FreeOptions:
    noise: float = option(0.0, "std of Gaussian noise added to each tiled copy while training (0: none)")
    init_std: float = option(0.0, "std of the variables' random initialisation (0: start at zero)")

    def __post_init__(self) -> None:
        require(self.noise >= 0, f"noise must be >= 0, got {self.noise}")
        require(self.init_std >= 0, f"init_std must be >= 0, got {self.init_std}")


class FreeInit(InitStrategy):
    """A free learned initial state per component, tiled over the batch, eq. (2b); optional noise."""

    name = "free"
    Options = FreeOptions

    def __init__(self, state_spec, context_size, options: FreeOptions) -> None:
        super().__init__(state_spec, context_size, options)
        self.values = nn.ParameterDict(
            {name: nn.Parameter(torch.randn(*shape) * options.init_std) for name, shape in state_spec.items()}
        )

    @property
    def can_sample(self) -> bool:
        return self.options.noise > 0

    def forward(self, batch_size: int, context: Tensor | None, *, device, dtype, sample=None) -> State:
        draw = self.training if sample is None else sample
        state = {}
        for name, value in self.values.items():
            tiled = value.to(dtype).expand(batch_size, *value.shape)  # a view: no copy per example
            if draw and self.options.noise > 0:
                tiled = tiled + self.options.noise * torch.randn_like(tiled)
            state[name] = tiled
        return state


@hookimpl
def register_init_strategies(register) -> None:
    register(FreeInit)
