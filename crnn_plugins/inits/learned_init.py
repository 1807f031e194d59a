"""The `learned` init strategy: the Contextual RNN's h0 = g(context), eq. (2c) and (4).

One linear head per state component maps the context network's output to that
component. With ``distribution=normal`` the head gives the mean and each component
has a free per-dimension scale: h0 ~ N(mean(ctx), softplus(sigma)), sampled with the
reparameterisation trick while training (or when asked), the mean otherwise.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crnn_core import ConfigError, InitStrategy, State, hookimpl, option, require
from crnn_core.interfaces.cell import constant_state
from crnn_core.base.resources import check_parameters


@dataclasses.dataclass
class LearnedOptions:
    distribution: Literal["none", "normal"] = option("none", "deterministic heads, or a Normal around them")
    sigma_init: float = option(0.25, "initial scale softplus(sigma) of the Normal (distribution=normal)")
    components: str = option("all", "state components with a head, comma-separated (others start at 0)")

    def __post_init__(self) -> None:
        require(self.sigma_init > 0, f"sigma_init must be positive, got {self.sigma_init}")


def _inverse_softplus(y: float) -> float:
    return y + math.log(-math.expm1(-y))


class LearnedInit(InitStrategy):
    """Initial state from the context network through a head per state component (Contextual RNN)."""

    name = "learned"
    Options = LearnedOptions
    uses_context = True
    rowwise = True

    def __init__(self, state_spec, context_size, options: LearnedOptions) -> None:
        super().__init__(state_spec, context_size, options)
        if context_size is None:
            raise ConfigError("init 'learned' needs context, but this task provides none")
        wanted = list(state_spec) if options.components == "all" else [c.strip() for c in options.components.split(",")]
        unknown = [c for c in wanted if c not in state_spec]
        if unknown or not wanted:
            raise ConfigError(
                f"init.components: '{options.components}' names no state component of this cell "
                f"(its components: {', '.join(state_spec)})"
            )
        check_parameters(sum((context_size + 1 + (options.distribution == "normal")) * math.prod(state_spec[name])
                             for name in wanted), "the learned init's heads",
                         "the context network's width (context.*) or the cell's state size (cell.hidden_size)")
        self.heads = nn.ModuleDict(
            {name: nn.Linear(context_size, math.prod(state_spec[name])) for name in wanted}
        )
        if options.distribution == "normal":
            raw = _inverse_softplus(options.sigma_init)
            self.sigmas = nn.ParameterDict(
                {name: nn.Parameter(torch.full(state_spec[name], raw)) for name in wanted}
            )

    @property
    def can_sample(self) -> bool:
        return self.options.distribution == "normal"

    def scale(self, name: str) -> Tensor:
        """softplus(sigma) of one component (distribution=normal only)."""
        return F.softplus(self.sigmas[name])

    def forward(self, batch_size: int, context: Tensor | None, *, device, dtype, sample=None) -> State:
        if context is None:
            raise ConfigError("init 'learned' was called without a context vector")
        draw = self.samples(sample)
        state = {}
        for name, shape in self.state_spec.items():
            if name not in self.heads:
                state[name] = constant_state(batch_size, shape, 0.0, device=device, dtype=dtype)
                continue
            mean = self.heads[name](context).view(batch_size, *shape)
            if draw:
                mean = mean + self.scale(name) * torch.randn_like(mean)
            state[name] = mean
        return state


@hookimpl
def register_init_strategies(register) -> None:
    register(LearnedInit)
