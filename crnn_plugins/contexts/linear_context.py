"""The `linear` context network: the paper's single layer g (used on ART)."""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch
from torch import Tensor, nn

from crnn_core import ContextNetwork, hookimpl, option, require
from crnn_core.resources import check_parameters


@dataclasses.dataclass
class LinearOptions:
    out_features: int = option(50, "width of the context vector")
    activation: Literal["none", "relu", "tanh"] = option("none", "nonlinearity after the layer")

    def __post_init__(self) -> None:
        require(self.out_features > 0, f"out_features must be positive, got {self.out_features}")


class LinearContext(ContextNetwork):
    """A single linear layer (optional nonlinearity): the paper's context network on ART."""

    name = "linear"
    rowwise = True
    Options = LinearOptions

    def __init__(self, in_features: int, options: LinearOptions) -> None:
        super().__init__(in_features, options)
        check_parameters((in_features + 1) * options.out_features, "the linear context network's weights",
                         "context.out_features")
        self.layer = nn.Linear(in_features, options.out_features)
        self.out_features = options.out_features

    def forward(self, features: Tensor) -> Tensor:
        out = self.layer(features)
        if self.options.activation == "relu":
            out = torch.relu(out)
        elif self.options.activation == "tanh":
            out = torch.tanh(out)
        return out


@hookimpl
def register_context_networks(register) -> None:
    register(LinearContext)
