"""The `identity` context network: passes the task's context features through unchanged."""

from __future__ import annotations

from torch import Tensor

from crnn_core import ContextNetwork, hookimpl


class IdentityContext(ContextNetwork):
    """No layer: the init strategy's heads see the raw context features."""

    name = "identity"
    rowwise = True

    def forward(self, features: Tensor) -> Tensor:
        return features


@hookimpl
def register_context_networks(register) -> None:
    register(IdentityContext)
