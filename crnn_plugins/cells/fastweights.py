"""The `fastweights` cell: the ``FastWeights`` layer (``fastweights_layer``) as a registered crnn cell.

A thin adapter: ``FastWeightsCell(input_size, options)`` is a ``FastWeights`` layer built
from the ``--set cell.*`` options, registered as a virtual subclass of ``crnn_core.Cell``
(the layer already has the cell's contract: ``hidden_size``, ``state_spec()``,
``forward(inputs, state)``), so its parameters keep their names (``U``, ``W``, ``norm``).
The CLI wants an unusable ``backend=fused`` refused before training, so the adapter
checks that when it is built; the layer itself chooses its backend on first use.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

import torch

from crnn_core import Cell, ConfigError, hookimpl, option
from crnn_core.interfaces.options import check_bounds, require

from ..fast_weights import fused as fastweights_fused
from ..fast_weights.layer import BIAS_INITS, FastWeights
from ..fast_weights.reference import A_UPDATES


#: Most inner steps: time grows linearly with S (S = 1 in Ba et al. and the paper), so 1000 already
#: makes an epoch 1000 times slower; beyond it one training step would outlast any run (and a
#: signal, which is handled between steps).
MAX_INNER_STEPS = 1000


@dataclasses.dataclass
class FastWeightsOptions:
    hidden_size: int = option(50, "number of hidden units H (checked against memory)", bounds=(1, None))
    lam: float = option(0.95, "decay rate lambda of the fast weights A", bounds=(0.0, 1.0))
    eta: float = option(0.5, "fast learning rate eta (A += eta h h^T)")
    inner_steps: int = option(1, "inner LayerNorm iterations S per time step (each costs an H x H product per step)",
                              bounds=(1, MAX_INNER_STEPS))
    activation: Literal["relu", "tanh"] = option("relu", "nonlinearity f")
    backend: Literal["auto", "fused", "reference"] = option(
        "auto", "fused C++/CUDA kernel, pure-PyTorch reference, or fused when it loads"
    )
    a_update: Literal[A_UPDATES] = option(
        "previous", "vector that updates A at step t: h_{t-1} (Ba et al.) or f(p_t) before the inner loop (the authors' code)"
    )
    ln_eps: float = option(1e-5, "epsilon of the inner LayerNorm (the authors' TensorFlow code: 1e-12)")
    bias_init: Literal[BIAS_INITS] = option(
        "zeros", "init of the input bias b: zeros, or glorot_uniform, U(+-sqrt(3/H)) (the authors' code)"
    )
    num_layers: int = option(1, "stacked layers L; layer l > 0 reads layer l - 1's outputs (the state is then "
                                "h [L, H], A [L, H, H] per example)", bounds=(1, None))
    dropout: float = option(0.0, "dropout on the outputs of each layer but the last, in training only (num_layers > 1)",
                            bounds=(0.0, 1.0))

    def __post_init__(self) -> None:
        check_bounds(self)
        require(self.ln_eps > 0, f"ln_eps must be > 0, got {self.ln_eps}")


class FastWeightsCell(FastWeights):
    """Fast-weights RNN (Ba et al. 2016): h and a decaying Hebbian matrix A, inner LayerNorm loop."""

    name = "fastweights"
    Options = FastWeightsOptions

    def __init__(self, input_size: int, options: FastWeightsOptions) -> None:
        if options.backend == "fused":
            ok, reason = fastweights_fused.load_status()
            if not ok:
                raise ConfigError(f"cell.backend=fused but the fused kernel cannot load: {reason}")
        super().__init__(input_size, options.hidden_size, lam=options.lam, eta=options.eta,
                         inner_steps=options.inner_steps, activation=options.activation, backend=options.backend,
                         a_update=options.a_update, ln_eps=options.ln_eps, bias_init=options.bias_init,
                         num_layers=options.num_layers, dropout=options.dropout)
        self.options = options

    def describe_backend(self) -> str:
        """Which backend runs on the CPU (or the parameters' device) and why."""
        return self.backend_for(self.W.device)

    def _unroll_for(self, device: torch.device):  # type: ignore[no-untyped-def]
        try:
            return super()._unroll_for(device)
        except RuntimeError as exc:  # backend=fused on a device it was not built for
            raise ConfigError(f"cell.backend=fused but the fused kernel cannot run on {device.type}: "
                              f"{str(exc).split(': ', 1)[-1]}") from None


Cell.register(FastWeightsCell)


@hookimpl
def register_cells(register) -> None:
    register(FastWeightsCell)
