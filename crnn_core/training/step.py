"""How one training step runs: the Adam implementation, ``torch.compile``, mixed precision.

``fit`` (``train.py``) takes its pieces from here, chosen by three ``TrainConfig`` options:

* ``adam_impl`` -- PyTorch's Adam as a per-parameter loop (``for-loop``, the implementation
  used before the option existed), as ``foreach`` kernels over all parameters, or ``fused``
  (one kernel; ``auto``: fused). The same update up to float rounding (training losses after
  64 ART steps agree to 1e-6; tests/test_fast_step.py), so it is not part of a checkpoint's
  identity.
* ``compile`` -- ``torch.compile`` of the forward pass and the loss (the model's encoder,
  init strategy, projections and head; the fused fast-weights op is a custom op with a fake
  implementation and sits in the graph as one call). The same results up to float rounding,
  not part of the identity; the first steps (and the first step of each new batch shape)
  pay the compilation.
* ``precision`` -- ``32`` (float32 throughout) or ``bf16-mixed``: forward and loss under
  ``torch.autocast(device_type, dtype=torch.bfloat16)``; parameters, gradients and Adam stay
  float32, and the fused op computes in float32 (it is registered for autocast). It changes
  results, so it is part of the identity.

:func:`grads_finite` checks every gradient for NaN/inf in one foreach call (the per-parameter
loop it replaces cost two small ops and a synchronisation per parameter and step).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, ContextManager, Iterable

import torch
from torch import Tensor, nn

from ..base.errors import ConfigError

#: The ``train.precision`` choices and the autocast dtype of each (None: no autocast).
PRECISIONS: dict[str, torch.dtype | None] = {"32": None, "bf16-mixed": torch.bfloat16}
#: The ``train.adam_impl`` choices and ``torch.optim.Adam``'s ``(foreach, fused)`` flags for each.
ADAM_FLAGS: dict[str, tuple[bool, bool]] = {"auto": (False, True), "for-loop": (False, False),
                                            "foreach": (True, False), "fused": (False, True)}


def check_precision(precision: str, device: torch.device) -> None:
    """Refuse a ``train.precision`` that ``device`` cannot run (a one-line ConfigError)."""
    dtype = PRECISIONS.get(precision)
    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision: '{precision}' is not one of {', '.join(PRECISIONS)}")
    if dtype is None:
        return
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"train.precision={precision} needs a cpu or cuda device, got {device.type}")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        name = torch.cuda.get_device_name(device)
        raise ConfigError(f"train.precision={precision}: this GPU ({name}) does not support bfloat16; use train.precision=32")


def precision_context(precision: str, device: torch.device) -> ContextManager[Any]:
    """The context the forward pass and the loss run in: autocast for ``bf16-mixed``, else nothing."""
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_adam(params: Iterable[nn.Parameter], lr: float, impl: str) -> torch.optim.Adam:
    """``torch.optim.Adam`` with the chosen implementation (``auto``: fused)."""
    if impl not in ADAM_FLAGS:
        raise ConfigError(f"train.adam_impl: '{impl}' is not one of {', '.join(ADAM_FLAGS)}")
    foreach, fused = ADAM_FLAGS[impl]
    return torch.optim.Adam(params, lr=lr, foreach=foreach, fused=fused)


def set_adam_impl(optimizer: torch.optim.Optimizer, impl: str) -> None:
    """Give every parameter group ``impl``'s flags again (``load_state_dict`` restores a
    checkpoint's, which may come from a run with another ``adam_impl``)."""
    for group in optimizer.param_groups:
        group["foreach"], group["fused"] = ADAM_FLAGS[impl]


def forward_loss(net: nn.Module, loss: Callable[[Tensor, Any], Tensor], precision: str, device: torch.device,
                 compile: bool) -> Callable[[Any], Tensor]:
    """``batch -> loss(net(batch), batch)`` under the precision's context, compiled if asked.

    Compiled with ``fallback_random``, so random draws inside the model (a sampled initial
    state) come from PyTorch's generator exactly as in eager mode.
    """

    def step_loss(batch: Any) -> Tensor:
        with precision_context(precision, device):
            return loss(net(batch), batch)

    if not compile:
        return step_loss
    return torch.compile(step_loss, options={"fallback_random": True})


def grads_finite(params: Iterable[nn.Parameter]) -> bool:
    """Whether every gradient is finite: one foreach check per (device, dtype) and one synchronisation.

    Uses the check of ``torch.amp.GradScaler`` with a scale of 1.0: the gradients keep their
    values exactly (x * 1.0 == x) and ``found`` turns 1 on a NaN/inf.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for g in (p.grad for p in params if p.grad is not None):
        if g.is_sparse:  # not a foreach case: checked on its own
            if not torch.isfinite(g.coalesce().values()).all():
                return False
        else:
            groups.setdefault((g.device, g.dtype), []).append(g.detach())
    return all(_finite_on(device, group) for (device, _), group in groups.items())


def _finite_on(device: torch.device, grads: list[Tensor]) -> bool:
    """Whether the dense gradients ``grads`` (all on ``device``) are finite: one foreach check."""
    found = torch.zeros(1, device=device)
    torch._amp_foreach_non_finite_check_and_unscale_(grads, found, torch.ones(1, device=device))
    return not bool(found.item())
