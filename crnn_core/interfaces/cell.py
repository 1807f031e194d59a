"""The Cell interface: a recurrent module that unrolls a whole sequence from a given state."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import ClassVar

import torch
from torch import Tensor, nn

from .options import NoOptions

#: A recurrent state: named tensors, each ``[B, *shape]`` (e.g. ``h`` and ``c`` for an LSTM).
State = dict[str, Tensor]


def constant_state(batch: int, shape: tuple[int, ...], value: float, *, device: torch.device | str | None = None,
                   dtype: torch.dtype | None = None) -> Tensor:
    """A ``[batch, *shape]`` state component equal to ``value`` everywhere, as a broadcast view
    of one element (every stride 0): no memory per example, read-only. A cell that needs
    memory calls ``.contiguous()``; one that can use the constant (see :func:`is_zero_constant`)
    skips the work. The zero init returns its states this way."""
    return torch.full((), value, device=device, dtype=dtype).expand(batch, *shape)


def is_zero_constant(t: Tensor) -> bool:
    """True for a CPU tensor that is a broadcast 0 needing no gradient (as :func:`constant_state`
    returns it): a cell may then skip the terms it multiplies. Reads its one element, so only
    on the CPU, where that costs no device synchronisation, and not inside ``torch.compile``
    (a value read would break the graph; the compiled step keeps the tensor)."""
    return (t.device.type == "cpu" and not t.requires_grad and t.numel() > 0 and all(s == 0 for s in t.stride())
            and not torch.compiler.is_compiling() and t.as_strided((), ()).item() == 0)


def broadcast_source(t: Tensor) -> Tensor | None:
    """The ``[*shape]`` tensor of which ``t [B, *shape]`` is an exact broadcast view
    (``source.expand(B, *shape)``: stride 0 along the batch, the source's strides and storage
    otherwise), else None. A cell may then compute with the source once instead of per
    example; gradients reach it as through the broadcast (summed over the batch). The free
    init's tiled variables look like this. None where autograd does not connect the view to
    a source that wants a gradient (a view made under ``torch.no_grad``), and inside
    ``torch.compile`` (views' sources are not traced)."""
    source = t._base
    if (source is None or t.dim() < 1 or t.stride(0) != 0 or torch.compiler.is_compiling()
            or tuple(source.shape) != tuple(t.shape[1:]) or source.stride() != t.stride()[1:]
            or source.storage_offset() != t.storage_offset() or source.requires_grad != t.requires_grad
            or (source.requires_grad and t.grad_fn is None)
            or source.untyped_storage().data_ptr() != t.untyped_storage().data_ptr()):
        return None
    return source


def check_state(owner: str, state: object, spec: dict[str, tuple[int, ...]], batch: int) -> None:
    """A state passed in by a user: a dict with exactly ``spec``'s keys, each ``[batch, *spec[key]]``.

    ``owner`` starts the message (``"FastWeights"``); a TypeError for the wrong container or
    keys, a ValueError for a wrong shape, each naming ``state``. (The plugin contract's own
    check of what a cell returns is ``crnn_core.interfaces.contract``.)
    """
    if not isinstance(state, dict) or set(state) != set(spec):
        got = sorted(state) if isinstance(state, dict) else type(state).__name__
        keys = " and ".join(repr(k) for k in spec)
        raise TypeError(f"{owner}: state must be a dict with keys {keys} (as forward returns it), got {got}")
    for name, shape in spec.items():
        want = (batch, *shape)
        value = state[name]
        if not isinstance(value, Tensor) or tuple(value.shape) != want:
            got = tuple(value.shape) if isinstance(value, Tensor) else type(value).__name__
            raise ValueError(f"{owner}: state['{name}'] must have shape {list(want)} (batch {batch}), got {got}")


class Cell(nn.Module, ABC):
    """Base class of every cell plugin.

    Subclasses set ``name`` (the registry key) and, if they take options, an
    ``Options`` dataclass; they are constructed as ``Cell(input_size, options)``.
    """

    #: The registry key (``crnn list``, ``--cell NAME``); ``register(cls)`` uses it.
    name: ClassVar[str]
    #: A dataclass of ``option(...)`` fields set with ``--set cell.KEY=VALUE``; an instance is passed to the constructor.
    Options: ClassVar[type] = NoOptions
    #: True for a cell whose forward checks ``lengths`` itself (``check_lengths``, e.g. ``FastWeights``,
    #: whose forward is also called directly): ``ContextualRNN`` then passes them on unchecked, so
    #: they are checked once. Otherwise ``ContextualRNN`` checks them and the cell receives them checked.
    validates_lengths: ClassVar[bool] = False

    def __init__(self, input_size: int, options: object) -> None:
        super().__init__()
        self.input_size = input_size  # features per input step
        self.options = options

    @property
    @abstractmethod
    def hidden_size(self) -> int:
        """Features per output step (the last dimension of ``forward``'s outputs)."""

    @abstractmethod
    def state_spec(self) -> dict[str, tuple[int, ...]]:
        """Name -> per-example shape of each state component, e.g. ``{"h": (H,), "A": (H, H)}``.

        Init strategies build exactly these components, each ``[B, *shape]``.
        """

    @abstractmethod
    def forward(self, inputs: Tensor, state: State) -> tuple[Tensor, State]:
        """Unroll over ``inputs [B, T, input_size]`` from ``state``.

        Returns outputs ``[B, T, hidden_size]`` and the final state (same keys as
        ``state_spec``).

        A cell may also take a keyword ``lengths`` (None, or int64 ``[B]`` in [1, T] on the
        inputs' device): example b then runs on its first ``lengths[b]`` steps as if alone,
        with zero outputs after them and its state after its own last step.
        ``ContextualRNN`` passes it (padded batches, ``PackedSequence``) to a cell that takes it,
        checked (or as the caller gave it to a cell that sets ``validates_lengths``).
        """

    def describe_backend(self) -> str:
        """A short human-readable note of how the cell computes (e.g. which kernel)."""
        return "pytorch"
