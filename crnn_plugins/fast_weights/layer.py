"""``FastWeights``: a fast-weights RNN layer (Ba et al. 2016) usable like ``torch.nn.LSTM``.

    >>> layer = FastWeights(input_size=8, hidden_size=32, lam=0.95, eta=0.5)
    >>> outputs, state = layer(torch.randn(4, 11, 8))      # a zero state by default
    >>> outputs.shape, state["h"].shape, state["A"].shape
    (torch.Size([4, 11, 32]), torch.Size([4, 32]), torch.Size([4, 32, 32]))

The state is a dict: ``h [B, H]`` (the last output) and the fast-weight matrix
``A [B, H, H]``; with ``num_layers`` L and ``bidirectional`` (D = 2), ``h [B, L * D, H]`` and
``A [B, L * D, H, H]`` (see ``FastWeights.state_spec``). ``lengths`` or a ``PackedSequence``
run a batch of sequences of different lengths (``crnn_core.layers.sequences``). The unroll runs on the fused C++/CUDA op (``fastweights_fused``) where
it is available for the input's device and on the pure-PyTorch reference otherwise
(``backend="auto"``). Importing this module registers the op when the kernel is prebuilt
or cached (``fastweights_fused``); a kernel that must be compiled is built, once, on the first
forward pass, never in the constructor. The backend is chosen on the first forward on each
device type, and a fallback is reported once as a ``crnn_core.base.env.CrnnWarning``
through :mod:`warnings`. :func:`fastweights_unroll` is the same choice for the functional op.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F
from torch.nn.utils.rnn import PackedSequence

from crnn_core.interfaces.cell import State, broadcast_source, check_state, is_zero_constant
from crnn_core.base.env import warn
from crnn_core.base.resources import FLOAT32, check_memory
from crnn_core.layers.sequences import repack, reverse_within, unpack

from . import fused as fastweights_fused
from .reference import A_UPDATES, ACTIVATIONS, check_lengths, fastweights_reference, last_outputs, reference_unroll

#: Initialisations of the input projection's bias b: zeros (crnn), or Glorot-uniform over [H], i.e.
#: U(-sqrt(3/H), sqrt(3/H)), TensorFlow's default for a variable created without an initializer
#: (the paper authors' code: their bias has none).
BIAS_INITS = ("zeros", "glorot_uniform")

BACKENDS = ("auto", "fused", "reference")
Unroll = Callable[..., tuple[Tensor, Tensor | None]]


def select_unroll(backend: str, device: torch.device) -> tuple[Unroll, str]:
    """The unroll for ``backend`` on ``device`` and a note of which runs and why.

    ``reference``: always the reference. ``fused``: the fused op, or a RuntimeError saying
    why it cannot run. ``auto``: the fused op where it can run, else the reference with a
    ``CrnnWarning`` at the caller's line (``env.warn``; shown once per reason and call site by Python's default filter).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if backend == "reference":
        return fastweights_reference, "reference (asked for)"
    ok, reason = fastweights_fused.device_status(device)
    if ok:
        return fastweights_fused.fastweights_fused, f"fused ({reason})"
    if backend == "fused":
        raise RuntimeError(f"backend='fused', but the fused fast-weights kernel cannot run on {device.type}: {reason}")
    warn(f"no fused fast-weights kernel for {device.type} ({reason}); using the reference backend")
    return fastweights_reference, f"reference (fused unavailable: {reason})"


def trusting(unroll: Unroll) -> Unroll:
    """The form of ``unroll`` that takes ``lengths`` as ``check_lengths`` returned it, without
    checking it again: ``reference_unroll`` for the reference; the fused op checks its own
    (it must stay memory-safe when called directly) and is returned as it is."""
    return reference_unroll if unroll is fastweights_reference else unroll


def a0_for(unroll: Unroll, A0: Tensor | None, batch: int) -> Tensor | None:
    """``A0`` as ``unroll`` takes it: the fused op takes one ``[H, H]`` matrix for the batch as
    it is; every other backend takes ``[B, H, H]``, so an ``[H, H]`` one is tiled (a view)."""
    if A0 is not None and A0.dim() == 2 and unroll is not fastweights_fused.fastweights_fused:
        return A0.expand(batch, *A0.shape)
    return A0


def fastweights_unroll(
    xp: Tensor,
    h0: Tensor,
    A0: Tensor | None,
    W: Tensor,
    gamma: Tensor,
    beta: Tensor,
    lam: float,
    eta: float,
    inner_steps: int,
    activation: str = "relu",
    eps: float = 1e-5,
    a_update: str = "previous",
    *,
    backend: str = "auto",
    final_state: bool = True,
    lengths: Tensor | list[int] | tuple[int, ...] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """The fast-weights unroll (equations in ``fastweights_reference``) on the chosen backend.

    Returns ``(outputs [B, T, H], A_T [B, H, H])``, or ``(outputs, None)`` with
    ``final_state=False``; ``A0=None`` is zero fast weights, and an ``[H, H]`` ``A0`` is one
    matrix for the whole batch (the fused op reads it once; its gradient is the batch sum).
    ``lengths`` (B ints in [1, T], a tensor on ``xp``'s device or a list) runs each example
    on its own first steps only: zero outputs after them, A_T after its own last step; its
    final h is ``last_outputs(outputs, lengths)``. See :func:`select_unroll` for ``backend``.
    """
    lengths = check_lengths(lengths, xp.shape[0], xp.shape[1], xp.device)
    unroll, _ = select_unroll(backend, xp.device)
    return trusting(unroll)(xp, h0, a0_for(unroll, A0, xp.shape[0]), W, gamma, beta, lam, eta, inner_steps,
                            activation, eps, a_update, final_state=final_state, lengths=lengths)


#: The hyperparameters that may be set after construction: name -> (test, what a valid value is, conversion).
HYPERPARAMETERS: dict[str, tuple[Callable[[object], bool], str, Callable[[object], object]]] = {
    "lam": (lambda v: _is_real(v) and 0.0 <= v <= 1.0, "must be in [0, 1]", float),
    "eta": (lambda v: _is_real(v) and math.isfinite(v) and v >= 0, "must be a finite number >= 0", float),
    "inner_steps": (lambda v: _is_int(v) and v >= 1, "must be an int >= 1", int),
    "activation": (lambda v: v in ACTIVATIONS, f"must be one of {', '.join(ACTIVATIONS)}", str),
    "backend": (lambda v: v in BACKENDS, f"must be one of {', '.join(BACKENDS)}", str),
    "a_update": (lambda v: v in A_UPDATES, f"must be one of {', '.join(A_UPDATES)}", str),
}


def _hyperparameter(name: str) -> property:
    """A validated attribute: set in the constructor or later, it is checked the same way
    (a one-line ValueError naming it) and read by the next forward; setting ``backend``
    drops the cached per-device choice, so the next forward chooses again."""
    valid, requirement, convert = HYPERPARAMETERS[name]

    def get(self: "FastWeights") -> object:
        return self.__dict__["_" + name]

    def set_(self: "FastWeights", value: object) -> None:
        _check(valid(value), name, f"{requirement}, got {value!r}")
        self.__dict__["_" + name] = convert(value)
        if name == "backend":
            self._unrolls.clear()

    return property(get, set_, doc=f"``{name}`` (validated when set; see the class docstring).")


class FastWeights(nn.Module):
    """Fast-weights RNN layer: h and a decaying Hebbian matrix A, with an inner LayerNorm loop.

    Args:
        input_size: features per input step.
        hidden_size: hidden units H of each layer and direction.
        num_layers: stacked layers; layer l > 0 reads layer l - 1's outputs (``H * D`` features).
        dropout: dropout probability on the outputs of each layer but the last, in train mode only.
        bidirectional: a second, reverse direction per layer, starting at each example's last
            step; the outputs are the two directions' concatenated (``[..., 2 * H]``).
        lam: decay rate of A, in [0, 1].
        eta: fast learning rate (A += eta h h^T).
        inner_steps: inner LayerNorm iterations per time step (>= 1).
        activation: ``"relu"`` or ``"tanh"``.
        batch_first: inputs and outputs are ``[B, T, *]`` (True) or ``[T, B, *]``.
        backend: ``"auto"`` (fused where available, else the reference with a warning),
            ``"fused"`` (an error where it cannot run) or ``"reference"``.
        a_update: which vector updates A at step t: ``"previous"`` (h_{t-1}, Ba et al.,
            the default) or ``"preliminary"`` (f(p_t), before the inner loop, as the
            paper authors' code does); see ``fastweights_reference``.
        ln_eps: the epsilon of the inner LayerNorm (1e-5; the authors' TensorFlow code used 1e-12).
        bias_init: the input projection's bias: ``"zeros"`` (the default) or ``"glorot_uniform"``
            (the authors' code). With all-zero inputs and state, a zero bias makes every
            pre-activation exactly 0, where ReLU passes no gradient: see ``BIAS_INITS``.
        device, dtype: where and in which floating-point type the parameters are created.

    Parameters: layer 0's forward direction is ``U`` (the input projection), ``W`` and ``norm``;
    layer l > 0 adds the suffix ``_l{l}`` and the reverse direction ``_reverse``, as nn.LSTM
    names its weights (``U_reverse``, ``W_l1``, ``norm_l1_reverse``). The attribute
    ``hidden_size`` is the output width ``H * D`` (D = 2 if bidirectional), as the cell contract
    and ``TorchRNN`` report it; ``direction_size`` is H.

    ``lam``, ``eta``, ``inner_steps``, ``activation``, ``backend`` and ``a_update`` may also be
    set after construction (``layer.backend = "reference"``): a value is checked as the
    constructor checks it and the next forward uses it (a new ``backend`` is chosen again).
    They are shared by every layer and direction.
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        num_layers: int = 1,
        dropout: float = 0.0,
        bidirectional: bool = False,
        lam: float = 0.95,
        eta: float = 0.5,
        inner_steps: int = 1,
        activation: str = "relu",
        batch_first: bool = True,
        backend: str = "auto",
        a_update: str = "previous",
        ln_eps: float = 1e-5,
        bias_init: str = "zeros",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        _check(_is_int(input_size) and input_size > 0, "input_size", f"must be a positive int, got {input_size!r}")
        _check(_is_int(hidden_size) and hidden_size > 0, "hidden_size", f"must be a positive int, got {hidden_size!r}")
        _check(_is_int(num_layers) and num_layers > 0, "num_layers", f"must be a positive int, got {num_layers!r}")
        _check(_is_real(dropout) and 0.0 <= dropout <= 1.0, "dropout", f"must be a number in [0, 1], got {dropout!r}")
        _check(isinstance(bidirectional, bool), "bidirectional", f"must be True or False, got {bidirectional!r}")
        _check(dtype is None or (isinstance(dtype, torch.dtype) and dtype.is_floating_point), "dtype",
               f"must be a floating-point torch.dtype, got {dtype!r}")
        self._unrolls: dict[str, tuple[Unroll, str]] = {}  # device type -> (unroll, note), chosen on first use
        self.lam, self.eta, self.inner_steps = lam, eta, inner_steps  # validated by the properties' setters
        _check(isinstance(batch_first, bool), "batch_first", f"must be True or False, got {batch_first!r}")
        self.activation, self.backend, self.a_update = activation, backend, a_update
        _check(_is_real(ln_eps) and math.isfinite(ln_eps) and ln_eps > 0, "ln_eps",
               f"must be a finite number > 0, got {ln_eps!r}")
        _check(bias_init in BIAS_INITS, "bias_init", f"must be one of {', '.join(BIAS_INITS)}, got {bias_init!r}")
        if dropout > 0 and num_layers == 1:
            warn(f"FastWeights: dropout={dropout} applies between layers, so it does nothing with num_layers=1")
        H, D = hidden_size, 2 if bidirectional else 1
        widths = [input_size] + [H * D] * (num_layers - 1)
        # parameters, their gradients and Adam's two moments, float32
        check_memory(4 * FLOAT32 * D * sum(H * (H + n) + 3 * H for n in widths), "the FastWeights weights",
                     "hidden_size (cell.hidden_size)")
        self.input_size, self.direction_size, self.batch_first = input_size, hidden_size, batch_first
        self.num_layers, self.dropout, self.bidirectional = num_layers, float(dropout), bidirectional
        factory = {"device": device, "dtype": dtype}
        for layer, width in enumerate(widths):
            for direction in range(D):
                suffix = _suffix(layer, direction)
                U = nn.Linear(width, H, **factory)
                setattr(self, "U" + suffix, U)
                self.register_parameter("W" + suffix, nn.Parameter(0.05 * torch.eye(H, **factory)))
                setattr(self, "norm" + suffix, nn.LayerNorm(H, eps=float(ln_eps), **factory))
                with torch.no_grad():
                    U.weight.copy_(0.05 * torch.eye(H, width))
                    U.bias.zero_()
                    if bias_init == "glorot_uniform":  # fan_in = fan_out = H for a vector, as TensorFlow computes it
                        bound = math.sqrt(6.0 / (2 * H))
                        U.bias.uniform_(-bound, bound)

    #: ``forward`` checks ``lengths`` itself (``ContextualRNN`` leaves the check to it).
    validates_lengths = True

    lam = _hyperparameter("lam")
    eta = _hyperparameter("eta")
    inner_steps = _hyperparameter("inner_steps")
    activation = _hyperparameter("activation")
    backend = _hyperparameter("backend")
    a_update = _hyperparameter("a_update")

    def __setstate__(self, state: dict) -> None:
        """Unpickle, also a layer pickled before the hyperparameters were validated attributes
        or before it had layers and directions (``hidden_size`` then was a plain attribute)."""
        for name in HYPERPARAMETERS:
            if name in state:
                state["_" + name] = state.pop(name)
        if "hidden_size" in state:
            state["direction_size"] = state.pop("hidden_size")
        for name, default in (("num_layers", 1), ("dropout", 0.0), ("bidirectional", False)):
            state.setdefault(name, default)
        super().__setstate__(state)

    @property
    def hidden_size(self) -> int:
        """Features per output step: ``direction_size`` times the number of directions."""
        return self.direction_size * self._directions

    @property
    def _directions(self) -> int:
        return 2 if self.bidirectional else 1

    def state_spec(self) -> dict[str, tuple[int, ...]]:
        """Per-example shapes of the state: ``{"h": (H,), "A": (H, H)}`` for one layer and
        direction, else ``{"h": (L * D, H), "A": (L * D, H, H)}``, layer-major, direction-minor
        (index ``l * D + d``, as nn.LSTM's ``h_n`` ``[L * D, B, H]`` taken batch-first)."""
        H, slots = self.direction_size, self.num_layers * self._directions
        lead = () if slots == 1 else (slots,)
        return {"h": (*lead, H), "A": (*lead, H, H)}

    def zero_state(self, batch_size: int, device: torch.device | None = None, dtype: torch.dtype | None = None) -> State:
        """The all-zero state for ``batch_size`` examples."""
        device = device or self.W.device
        dtype = dtype or self.W.dtype
        return {name: torch.zeros(batch_size, *shape, device=device, dtype=dtype) for name, shape in self.state_spec().items()}

    def backend_for(self, device: torch.device) -> str:
        """Which backend runs on ``device`` and why (loads the fused kernel if it is not loaded yet)."""
        return self._unroll_for(device)[1]

    def _unroll_for(self, device: torch.device) -> tuple[Unroll, str]:
        if device.type not in self._unrolls:
            self._unrolls[device.type] = select_unroll(self.backend, device)
        return self._unrolls[device.type]

    def forward(self, x: Tensor | PackedSequence, state: State | None = None, *, lengths: Tensor | list[int] | None = None,
                final_state: bool = True) -> tuple[Tensor | PackedSequence, State | None]:
        """Unroll over ``x`` (``[B, T, input_size]``, or ``[T, B, input_size]`` unless batch_first).

        Returns the outputs ``[B, T, hidden_size]`` (or ``[T, B, hidden_size]``) and the final
        state (shapes in ``state_spec``). ``state`` is each layer's and direction's initial
        state and defaults to zeros (never materialised: the unroll skips the A_0 terms, as it
        does for a ``crnn_core.interfaces.cell.constant_state`` 0); the reverse direction
        starts from its initial state at each example's last step, as nn.LSTM's.
        ``lengths`` (B ints in [1, T], a list or an int64 tensor on x's device) runs example b
        on its first ``lengths[b]`` steps only, as if it were alone: zero outputs after them,
        its final h and A those after its own last step. A ``PackedSequence`` ``x`` is run
        that way and gives a ``PackedSequence`` of outputs; the state is in the original
        batch order. ``final_state=False`` returns ``(outputs, None)`` and skips computing the
        final A (a B x H x H write) for a caller that only reads the outputs.
        """
        packed = x if isinstance(x, PackedSequence) else None
        if packed is not None:
            if lengths is not None:
                raise ValueError("FastWeights: lengths comes from the PackedSequence; pass one or the other")
            x, lengths = unpack(packed)
        elif not isinstance(x, Tensor) or x.dim() != 3:
            raise ValueError(f"FastWeights: x must be a 3-d tensor with {self.input_size} features or a PackedSequence, "
                             f"got {tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        elif not self.batch_first:
            x = x.transpose(0, 1)
        if x.shape[-1] != self.input_size:
            raise ValueError(f"FastWeights: x must have {self.input_size} features, got {x.shape[-1]}")
        if not x.is_floating_point():
            raise TypeError(f"FastWeights: x must be a floating-point tensor, got {x.dtype}")
        if x.shape[1] == 0:
            raise ValueError("FastWeights: x has no time steps (T = 0)")
        checked = check_lengths(lengths, x.shape[0], x.shape[1], x.device)
        outputs, final = self._stack(x, None, state, checked, final_state)
        if packed is not None:
            return repack(outputs, lengths, packed), final
        return (outputs if self.batch_first else outputs.transpose(0, 1)), final

    @property
    def input_projection(self) -> nn.Linear | None:
        """The input projection ``U`` (its output is the unroll's ``xp``), for ``forward_projected``;
        None for a bidirectional layer, whose two directions project their inputs each."""
        return None if self.bidirectional else self.U

    def forward_projected(self, xp: Tensor, state: State | None = None, *, lengths: Tensor | list[int] | None = None,
                          final_state: bool = True) -> tuple[Tensor, State | None]:
        """``forward`` from inputs already projected by ``input_projection`` (``[B, T, H]``, batch first)."""
        if self.bidirectional:
            raise ValueError("FastWeights: forward_projected needs one input projection; a bidirectional layer has "
                             "two (input_projection is None): call forward")
        if not isinstance(xp, Tensor) or xp.dim() != 3 or xp.shape[-1] != self.direction_size or xp.shape[1] == 0:
            raise ValueError(f"FastWeights: projected inputs must be [B, T > 0, {self.direction_size}], "
                             f"got {tuple(xp.shape) if isinstance(xp, Tensor) else type(xp).__name__}")
        return self._stack(None, xp, state, check_lengths(lengths, xp.shape[0], xp.shape[1], xp.device), final_state)

    def _stack(self, x: Tensor | None, xp: Tensor | None, state: State | None, lengths: Tensor | None,
               final_state: bool) -> tuple[Tensor, State | None]:
        """Every layer and direction over ``x [B, T, F]`` (batch first), or from layer 0's
        projected inputs ``xp`` (unidirectional only); ``lengths`` as ``check_lengths`` returned it."""
        batch, steps = (x if x is not None else xp).shape[:2]
        if lengths is not None and x is not None:  # padding (even NaN) reaches no product, nor U's gradient
            x = x.masked_fill((torch.arange(steps, device=x.device) >= lengths.unsqueeze(1)).unsqueeze(-1), 0)
        initial = self._initial_states(state, batch)
        D, hs, As = self._directions, [], []
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0:
                x = F.dropout(x, self.dropout, self.training)
            outputs = []
            for direction in range(D):
                suffix = _suffix(layer, direction)
                projected = xp if (layer == 0 and xp is not None) else getattr(self, "U" + suffix)(x)
                if direction:
                    projected = reverse_within(projected, lengths)
                out, h, A = self._unroll(projected, *initial[layer * D + direction], suffix, lengths, final_state)
                outputs.append(reverse_within(out, lengths) if direction else out)
                hs.append(h)
                As.append(A)
            x = outputs[0] if D == 1 else torch.cat(outputs, dim=-1)
        if not final_state:
            return x, None
        if len(hs) == 1:
            return x, {"h": hs[0], "A": As[0]}
        return x, {"h": torch.stack(hs, dim=1), "A": torch.stack(As, dim=1)}

    def _initial_states(self, state: State | None, batch: int) -> list[tuple[Tensor | None, Tensor | None]]:
        """``(h0, A0)`` of each layer and direction (None: zeros). An A0 that is a zero constant
        is None; one tiled over the batch (the free init's) is its ``[H, H]`` source."""
        slots = self.num_layers * self._directions
        if state is None:
            return [(None, None)] * slots
        check_state("FastWeights", state, self.state_spec(), batch)
        h, A = state["h"], state["A"]
        if slots == 1:
            return [(h, A)]
        if is_zero_constant(A):
            return [(h[:, i], None) for i in range(slots)]
        shared = broadcast_source(A)
        return [(h[:, i], A[:, i] if shared is None else shared[i]) for i in range(slots)]

    def _unroll(self, xp: Tensor, h0: Tensor | None, A0: Tensor | None, suffix: str, lengths: Tensor | None,
                final_state: bool) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """One layer and direction from projected inputs ``xp [B, T, H]`` (batch first):
        its outputs and, with ``final_state``, its final h and A."""
        batch = xp.shape[0]
        h0 = xp.new_zeros(batch, self.direction_size) if h0 is None else h0
        _check_unroll_memory(xp, self.direction_size, self.inner_steps)
        unroll, _ = self._unroll_for(xp.device)
        if A0 is not None and A0.dim() == 2:  # one matrix for the batch: the fused op reads it once
            A0 = a0_for(unroll, A0, batch)
        elif A0 is not None and is_zero_constant(A0):
            A0 = None
        elif A0 is not None:
            shared = broadcast_source(A0) if unroll is fastweights_fused.fastweights_fused else None
            A0 = A0.contiguous() if shared is None else shared
        norm = getattr(self, "norm" + suffix)
        args = (xp.contiguous(), h0.contiguous(), A0, getattr(self, "W" + suffix), norm.weight, norm.bias, self.lam,
                self.eta, self.inner_steps, self.activation, norm.eps, self.a_update)
        outputs, A = trusting(unroll)(*args, final_state=final_state, lengths=lengths)
        if not final_state:
            return outputs, None, None
        return outputs, last_outputs(outputs, lengths), A

    def extra_repr(self) -> str:
        layers = "" if self.num_layers == 1 else f", num_layers={self.num_layers}"
        layers += "" if self.dropout == 0 else f", dropout={self.dropout}"
        layers += ", bidirectional=True" if self.bidirectional else ""
        return (f"{self.input_size}, {self.direction_size}{layers}, lam={self.lam}, eta={self.eta}, "
                f"inner_steps={self.inner_steps}, activation={self.activation!r}, batch_first={self.batch_first}, "
                f"backend={self.backend!r}, a_update={self.a_update!r}, ln_eps={self.norm.eps}")


def _suffix(layer: int, direction: int) -> str:
    """The parameter-name suffix of a layer and direction: ``""``, ``"_reverse"``, ``"_l1"``, ``"_l1_reverse"``."""
    return ("" if layer == 0 else f"_l{layer}") + ("_reverse" if direction else "")


#: Estimates below this many bytes are not checked against free memory (no /proc read per step).
CHECK_ABOVE = 2**30


def unroll_bytes(batch: int, steps: int, hidden: int, inner_steps: int, itemsize: int, grad: bool) -> int:
    """Bytes one unroll needs: the state and outputs, and with ``grad`` what the backward keeps
    (per step and inner step a few ``[B, H]`` activations, per step the reference's ``[B, H, H]`` A)."""
    if grad:
        return batch * steps * (6 * inner_steps * hidden + 3 * hidden * hidden) * itemsize
    return batch * (2 * hidden * hidden + 2 * steps * hidden) * itemsize


def _check_unroll_memory(x: Tensor, hidden: int, inner_steps: int) -> None:
    """Refuse an unroll that cannot fit in memory (one-line ``ConfigError``) before allocating it."""
    need = unroll_bytes(x.shape[0], x.shape[1], hidden, inner_steps, x.element_size(), torch.is_grad_enabled())
    if need > CHECK_ABOVE and x.device.type == "cpu":
        check_memory(need, f"a FastWeights unroll of {x.shape[0]} x {x.shape[1]} steps",
                     "the batch size, the sequence length, hidden_size or inner_steps (cell.inner_steps)")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check(condition: bool, argument: str, message: str) -> None:
    if not condition:
        raise ValueError(f"FastWeights: {argument} {message}")
