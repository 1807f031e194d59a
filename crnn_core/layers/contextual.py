"""``ContextualRNN``: any recurrent module with a zero, free or learned (context-conditioned) initial state.

    >>> rnn = ContextualRNN(nn.GRU(8, 32, batch_first=True), init="learned", context_size=16)
    >>> outputs, state = rnn(torch.randn(4, 11, 8), context=torch.randn(4, 16))

The module is a crnn cell (``crnn_core.Cell``, a plugin's cell, or any module with the
cell's contract: ``hidden_size``, ``state_spec()``, ``forward(inputs, state) -> (outputs,
state)``) or a plain ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` with ``batch_first=True``
(adapted by :class:`TorchRNN`). The initial state comes from an init strategy, named as in
``crnn run --init`` (``zero``, ``free``, ``learned``, or a plugin's) or given as an instance.
A batch of sequences of different lengths is a padded ``x`` with ``lengths=`` or a
``PackedSequence`` (``crnn_core.layers.sequences``), for a module that takes lengths.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from ..interfaces.cell import Cell, State, check_state
from ..interfaces.init_strategy import InitStrategy
from ..interfaces.options import NoOptions, build_options
from .sequences import check_lengths, repack, run_torch_rnn, unpack


class TorchRNN(Cell):
    """``torch.nn.LSTM``, ``GRU`` or ``RNN`` (``batch_first=True``) as a crnn cell.

    State components: ``h`` (and ``c`` for an LSTM), each ``[B, H]`` for a one-layer,
    one-direction module, else ``[B, layers * directions, H]``.
    """

    name = "torch-rnn"

    def __init__(self, module: nn.RNNBase) -> None:
        if not isinstance(module, (nn.LSTM, nn.GRU, nn.RNN)):
            raise TypeError(f"TorchRNN: module must be torch.nn.LSTM, GRU or RNN, got {type(module).__name__}")
        if not module.batch_first:
            raise ValueError("TorchRNN: the module needs batch_first=True (crnn cells take inputs [B, T, features])")
        super().__init__(module.input_size, NoOptions())
        self.module = module
        self._stack = module.num_layers * (2 if module.bidirectional else 1)
        self._is_lstm = isinstance(module, nn.LSTM)

    @property
    def hidden_size(self) -> int:
        out = self.module.proj_size if self._is_lstm and self.module.proj_size > 0 else self.module.hidden_size
        return out * (2 if self.module.bidirectional else 1)

    def state_spec(self) -> dict[str, tuple[int, ...]]:
        lead = () if self._stack == 1 else (self._stack,)
        h_size = self.module.proj_size if self._is_lstm and self.module.proj_size > 0 else self.module.hidden_size
        spec = {"h": (*lead, h_size)}
        if self._is_lstm:
            spec["c"] = (*lead, self.module.hidden_size)
        return spec

    def _to_torch(self, t: Tensor) -> Tensor:  # [B, (stack,) H] -> [stack, B, H]
        return (t.unsqueeze(0) if self._stack == 1 else t.transpose(0, 1)).contiguous()

    def _from_torch(self, t: Tensor) -> Tensor:
        return t.squeeze(0) if self._stack == 1 else t.transpose(0, 1)

    def forward(self, inputs: Tensor, state: State, *, lengths: Tensor | None = None) -> tuple[Tensor, State]:
        """The module over ``inputs [B, T, F]`` from ``state``; with ``lengths`` (int64 ``[B]`` in
        [1, T]) over the packed sequence, its outputs padded back to T steps with zeros."""
        if self._is_lstm:
            outputs, (h, c) = run_torch_rnn(self.module, inputs, (self._to_torch(state["h"]), self._to_torch(state["c"])),
                                            lengths)
            return outputs, {"h": self._from_torch(h), "c": self._from_torch(c)}
        outputs, h = run_torch_rnn(self.module, inputs, self._to_torch(state["h"]), lengths)
        return outputs, {"h": self._from_torch(h)}

    def describe_backend(self) -> str:
        return f"torch.nn.{type(self.module).__name__}"


def as_cell(module: nn.Module) -> nn.Module:
    """``module`` itself if it has the cell contract, a :class:`TorchRNN` around a torch RNN, else a TypeError."""
    if isinstance(module, (nn.LSTM, nn.GRU, nn.RNN)):
        return TorchRNN(module)
    if isinstance(module, nn.Module) and callable(getattr(module, "state_spec", None)) and hasattr(module, "hidden_size"):
        if getattr(module, "batch_first", True) is False:
            raise ValueError(f"ContextualRNN: the module needs batch_first=True (crnn cells take inputs [B, T, features]), "
                             f"got {type(module).__name__}(batch_first=False)")
        return module
    raise TypeError(
        "ContextualRNN: module must be a crnn cell (hidden_size, state_spec(), forward(inputs, state)) "
        f"or torch.nn.LSTM/GRU/RNN, got {type(module).__name__}"
    )


def make_init(
    init: str | InitStrategy,
    state_spec: dict[str, tuple[int, ...]],
    context_size: int | None,
    options: dict[str, Any] | None = None,
) -> InitStrategy:
    """An init strategy by registry name (``zero``, ``free``, ``learned``, a plugin's) with ``options``, or ``init`` itself."""
    if isinstance(init, InitStrategy):
        if options:
            raise ValueError("ContextualRNN: init_options only apply when init is given by name")
        return init
    if not isinstance(init, str):
        raise TypeError(f"ContextualRNN: init must be a name or an InitStrategy, got {type(init).__name__}")
    from ..plugin_manager.manager import get_plugins

    cls = get_plugins().registry("inits").get(init).cls
    if cls.uses_context and context_size is None:
        raise ValueError(f"ContextualRNN: init={init!r} builds the state from a context vector; pass context_size=...")
    return cls(state_spec, context_size if cls.uses_context else None, build_options(cls.Options, options or {}, "init"))


class ContextualRNN(nn.Module):
    """A recurrent module whose initial state comes from an init strategy (optionally from a context vector).

    Args:
        module: a crnn cell, or ``torch.nn.LSTM`` / ``GRU`` / ``RNN`` with ``batch_first=True``.
        init: an init strategy name (``"zero"``, ``"free"``, ``"learned"``, a plugin's) or instance.
        context_size: width of the context vector given to ``forward`` (after ``context_net``, if any);
            needed by strategies that use context (``learned``).
        context_net: optional module applied to ``forward``'s ``context`` first.
        init_options: the strategy's options by name, e.g. ``{"distribution": "normal"}``.
    """

    def __init__(
        self,
        module: nn.Module,
        init: str | InitStrategy = "zero",
        *,
        context_size: int | None = None,
        context_net: nn.Module | None = None,
        init_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if context_size is not None and not (isinstance(context_size, int) and not isinstance(context_size, bool)
                                             and context_size > 0):
            raise ValueError(f"ContextualRNN: context_size must be a positive int, got {context_size!r}")
        self.cell = as_cell(module)
        self.init = make_init(init, self.cell.state_spec(), context_size, init_options)
        self.context_net = context_net
        self.context_size = context_size
        #: The cell's forward takes ``lengths`` (then a padded batch with lengths or a PackedSequence can run).
        self._takes_lengths = takes_keyword(self.cell.forward, "lengths")

    @property
    def hidden_size(self) -> int:
        """Features per output step."""
        return self.cell.hidden_size

    def initial_state(self, batch_size: int, context: Tensor | None = None, *, sample: bool | None = None) -> State:
        """The initial state for ``batch_size`` examples (``context [B, C]`` where the strategy uses it).

        ``sample``: draw from the strategy's distribution (True), take its mean (False), or
        sample while training only (None), as in ``InitStrategy.forward``; True is a ValueError
        for a strategy with no distribution (``can_sample`` False).
        """
        if sample is not None and not isinstance(sample, bool):
            raise TypeError(f"ContextualRNN: sample must be True, False or None, got {sample!r}")
        if sample and not self.init.can_sample:
            raise ValueError(f"ContextualRNN: sample=True, but init '{self.init.name}' has no distribution to sample "
                             "from (e.g. init='learned' with init_options={'distribution': 'normal'})")
        if self.init.uses_context:
            if context is None:
                raise ValueError(f"ContextualRNN: init '{self.init.name}' needs context=... in forward")
            self._check_context(context, batch_size)
            if self.context_net is not None:
                context = self.context_net(context)
        else:
            context = None
        param = next(self.cell.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        dtype = param.dtype if param is not None else torch.get_default_dtype()
        return self.init(batch_size, context, device=device, dtype=dtype, sample=sample)

    def forward(
        self, x: Tensor | PackedSequence, context: Tensor | None = None, *, state: State | None = None,
        sample: bool | None = None, lengths: Tensor | list[int] | None = None,
    ) -> tuple[Tensor | PackedSequence, State]:
        """Unroll over ``x [B, T, features]`` from ``state`` or, by default, the initial state.

        Returns the outputs ``[B, T, hidden_size]`` and the final state (a dict of tensors).
        ``context`` and ``sample`` choose the initial state, so they cannot be combined with
        ``state`` (a ValueError): to continue from a state, pass the state alone. For a
        bidirectional module the state holds each direction's initial state, as nn.LSTM's
        ``h_0``: the reverse direction starts from its own at each example's last step.
        ``lengths`` (B ints in [1, T], a list or an int64 tensor on x's device) runs example b
        on its first ``lengths[b]`` steps: zero outputs after them, the final state after its
        own last step; a ``PackedSequence`` ``x`` gives a ``PackedSequence`` of outputs (the
        state in the original batch order). Both need a module whose forward takes ``lengths``
        (``FastWeights``, ``nn.LSTM``/``GRU``/``RNN``); another is a ValueError.
        """
        packed = x if isinstance(x, PackedSequence) else None
        if packed is not None:
            if lengths is not None:
                raise ValueError("ContextualRNN: lengths comes from the PackedSequence; pass one or the other")
            x, lengths = unpack(packed)
            packed_lengths = lengths
        if not isinstance(x, Tensor) or x.dim() != 3:
            raise ValueError(f"ContextualRNN: x must be a 3-d tensor [B, T, features] or a PackedSequence, "
                             f"got {tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        if lengths is not None and not self._takes_lengths:
            raise ValueError(f"ContextualRNN: lengths (or a PackedSequence) needs a module whose forward takes "
                             f"lengths; {type(self.cell).__name__}.forward does not")
        if not getattr(self.cell, "validates_lengths", False):  # else the cell's forward checks them, once
            lengths = check_lengths(lengths, x.shape[0], x.shape[1], x.device)
        if state is None:
            state = self.initial_state(x.shape[0], context, sample=sample)
        else:
            for name, value in (("context", context), ("sample", sample)):
                if value is not None:
                    raise ValueError(f"ContextualRNN: {name}= chooses the initial state, so it cannot be combined "
                                     "with state= (the unroll continues from state); pass one of them")
            check_state("ContextualRNN", state, self.cell.state_spec(), x.shape[0])
        outputs, final = self.cell(x, state) if lengths is None else self.cell(x, state, lengths=lengths)
        return (outputs if packed is None else repack(outputs, packed_lengths, packed)), final

    def _check_context(self, context: Tensor, batch_size: int) -> None:
        """``context`` is ``[B, context_size]`` (``[B, *]`` when a context_net maps it first)."""
        if not isinstance(context, Tensor) or context.dim() < 2 or context.shape[0] != batch_size:
            got = tuple(context.shape) if isinstance(context, Tensor) else type(context).__name__
            raise ValueError(f"ContextualRNN: context must be [B, context_size] with B = {batch_size}, got {got}")
        if self.context_net is None and self.context_size is not None and tuple(context.shape[1:]) != (self.context_size,):
            raise ValueError(f"ContextualRNN: context must be [B, {self.context_size}] (context_size), "
                             f"got {tuple(context.shape)}")


def takes_keyword(function: Any, name: str) -> bool:
    """Whether ``function`` (None: no) has a parameter ``name``."""
    if function is None:
        return False
    try:
        return name in inspect.signature(function).parameters
    except (TypeError, ValueError):
        return False
