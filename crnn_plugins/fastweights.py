"""The `fastweights` cell: Ba et al. (2016) fast weights with inner LayerNorm loop.

State ``h: [B, H]`` and ``A: [B, H, H]``. The math is in ``fastweights_reference``
(pure PyTorch) and, for the ``fused`` backend, in the C++/CUDA op of
``fastweights_fused``; ``backend=auto`` uses the fused op when it loads.
"""

from __future__ import annotations

import dataclasses
import sys
from typing import Literal

import torch
from torch import Tensor, nn

from crnn_core import Cell, ConfigError, State, hookimpl, option, require

from .fastweights_reference import fastweights_reference

_warned_fallback = False
_warned_devices: set[str] = set()


@dataclasses.dataclass
class FastWeightsOptions:
    hidden_size: int = option(50, "number of hidden units H")
    lam: float = option(0.95, "decay rate lambda of the fast weights A")
    eta: float = option(0.5, "fast learning rate eta (A += eta h h^T)")
    inner_steps: int = option(1, "inner LayerNorm iterations S per time step")
    activation: Literal["relu", "tanh"] = option("relu", "nonlinearity f")
    backend: Literal["auto", "fused", "reference"] = option(
        "auto", "fused C++/CUDA kernel, pure-PyTorch reference, or fused when it loads"
    )

    def __post_init__(self) -> None:
        require(self.hidden_size > 0, f"hidden_size must be positive, got {self.hidden_size}")
        require(self.inner_steps >= 1, f"inner_steps must be >= 1, got {self.inner_steps}")
        require(0.0 <= self.lam <= 1.0, f"lam must be in [0, 1], got {self.lam}")


def resolve_backend(requested: str):
    """The unroll function for a backend name, and a note saying which runs and why."""
    global _warned_fallback
    if requested == "reference":
        return fastweights_reference, "reference (asked for)"
    try:
        from . import fastweights_fused

        ok, reason = fastweights_fused.load_status()
    except ImportError as exc:  # the op module itself is missing
        ok, reason = False, f"fused module unavailable: {exc}"
    if ok:
        return fastweights_fused.fastweights_fused, f"fused ({reason})"
    if requested == "fused":
        raise ConfigError(f"cell.backend=fused but the fused kernel cannot load: {reason}")
    if not _warned_fallback:
        _warned_fallback = True
        print(f"crnn: warning: fused fast-weights kernel unavailable ({reason}); using the reference backend", file=sys.stderr)
    return fastweights_reference, f"reference (fused unavailable: {reason})"


class FastWeightsCell(Cell):
    """Fast-weights RNN (Ba et al. 2016): h and a decaying Hebbian matrix A, inner LayerNorm loop."""

    name = "fastweights"
    Options = FastWeightsOptions

    def __init__(self, input_size: int, options: FastWeightsOptions) -> None:
        super().__init__(input_size, options)
        H = options.hidden_size
        self.U = nn.Linear(input_size, H)
        self.W = nn.Parameter(0.05 * torch.eye(H))
        self.norm = nn.LayerNorm(H, eps=1e-5)
        with torch.no_grad():
            self.U.weight.copy_(0.05 * torch.eye(H, input_size))
            self.U.bias.zero_()
        self._unroll, self._backend_note = resolve_backend(options.backend)

    @property
    def hidden_size(self) -> int:
        return self.options.hidden_size

    def state_spec(self) -> dict[str, tuple[int, ...]]:
        H = self.options.hidden_size
        return {"h": (H,), "A": (H, H)}

    def describe_backend(self) -> str:
        return self._backend_note

    def _unroll_for(self, device: torch.device):
        """The unroll for ``device``: the fused op covers CPU, and CUDA only when built with it."""
        if self._unroll is fastweights_reference or device.type == "cpu":
            return self._unroll
        from . import fastweights_fused

        ok, reason = fastweights_fused.device_status(device)
        if ok:
            return self._unroll
        if self.options.backend == "fused":
            raise ConfigError(f"cell.backend=fused but the fused kernel cannot run on {device.type}: {reason}")
        if device.type not in _warned_devices:
            _warned_devices.add(device.type)
            print(f"crnn: warning: no fused fast-weights kernel for {device.type} ({reason}); "
                  "using the reference backend there", file=sys.stderr)
        return fastweights_reference

    def forward(self, inputs: Tensor, state: State) -> tuple[Tensor, State]:
        o = self.options
        xp = self.U(inputs)
        outputs, A = self._unroll_for(xp.device)(
            xp.contiguous(),
            state["h"].contiguous(),
            state["A"].contiguous(),
            self.W,
            self.norm.weight,
            self.norm.bias,
            o.lam,
            o.eta,
            o.inner_steps,
            o.activation,
        )
        return outputs, {"h": outputs[:, -1], "A": A}


@hookimpl
def register_cells(register) -> None:
    register(FastWeightsCell)
