"""The `mlp` context network: hidden layers with ReLU (50 units, used on LCD).

Its output is the last hidden layer's activation; the init strategy's heads are the
final linear layer, so ``mlp`` + ``learned`` is the paper's g(x0, T) with one hidden layer.
"""

from __future__ import annotations

import dataclasses

from torch import Tensor, nn

from crnn_core import ContextNetwork, hookimpl, option, require
from crnn_core.resources import check_parameters


@dataclasses.dataclass
class MLPOptions:
    hidden: int = option(50, "units per hidden layer")
    layers: int = option(1, "number of hidden layers")

    def __post_init__(self) -> None:
        for name in ("hidden", "layers"):
            require(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")


class MLPContext(ContextNetwork):
    """ReLU hidden layers (one of 50 units by default): LCD's context network."""

    name = "mlp"
    rowwise = True
    Options = MLPOptions

    def __init__(self, in_features: int, options: MLPOptions) -> None:
        super().__init__(in_features, options)
        width, hidden = in_features, options.hidden
        check_parameters((width + 1) * hidden + (options.layers - 1) * (hidden + 1) * hidden,
                         "the mlp context network's weights", "context.hidden / context.layers")
        layers: list[nn.Module] = []
        for _ in range(options.layers):
            layers += [nn.Linear(width, options.hidden), nn.ReLU()]
            width = options.hidden
        self.net = nn.Sequential(*layers)
        self.out_features = width

    def forward(self, features: Tensor) -> Tensor:
        return self.net(features)


@hookimpl
def register_context_networks(register) -> None:
    register(MLPContext)
