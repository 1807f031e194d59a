"""``FastWeights``: a fast-weights RNN layer (Ba et al. 2016) usable like ``torch.nn.LSTM``.

    >>> layer = FastWeights(input_size=8, hidden_size=32, lam=0.95, eta=0.5)
    >>> outputs, state = layer(torch.randn(4, 11, 8))      # a zero state by default
    >>> outputs.shape, state["h"].shape, state["A"].shape
    (torch.Size([4, 11, 32]), torch.Size([4, 32]), torch.Size([4, 32, 32]))

The state is a dict: ``h [B, H]`` (the last output) and the fast-weight matrix
``A [B, H, H]``. The unroll runs on the fused C++/CUDA op (``fastweights_fused``) where
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

from crnn_core.interfaces.cell import State, broadcast_source, check_state, is_zero_constant
from crnn_core.base.env import warn
from crnn_core.base.resources import FLOAT32, check_memory

from . import fused as fastweights_fused
from .reference import A_UPDATES, ACTIVATIONS, check_lengths, fastweights_reference, last_outputs  # noqa: F401 (last_outputs: for callers of fastweights_unroll)

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
    return unroll(xp, h0, a0_for(unroll, A0, xp.shape[0]), W, gamma, beta, lam, eta, inner_steps, activation, eps,
                  a_update, final_state=final_state, lengths=lengths)


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
        hidden_size: hidden units H (the output width).
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

    ``lam``, ``eta``, ``inner_steps``, ``activation``, ``backend`` and ``a_update`` may also be
    set after construction (``layer.backend = "reference"``): a value is checked as the
    constructor checks it and the next forward uses it (a new ``backend`` is chosen again).
    """

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        *,
        lam: float = 0.95,
        eta: float = 0.5,
        inner_steps: int = 1,
        activation: str = "relu",
        batch_first: bool = True,
        backend: str = "auto",
        a_update: str = "previous",
        ln_eps: float = 1e-5,
        bias_init: str = "zeros",
    ) -> None:
        super().__init__()
        _check(_is_int(input_size) and input_size > 0, "input_size", f"must be a positive int, got {input_size!r}")
        _check(_is_int(hidden_size) and hidden_size > 0, "hidden_size", f"must be a positive int, got {hidden_size!r}")
        self._unrolls: dict[str, tuple[Unroll, str]] = {}  # device type -> (unroll, note), chosen on first use
        self.lam, self.eta, self.inner_steps = lam, eta, inner_steps  # validated by the properties' setters
        _check(isinstance(batch_first, bool), "batch_first", f"must be True or False, got {batch_first!r}")
        self.activation, self.backend, self.a_update = activation, backend, a_update
        _check(_is_real(ln_eps) and math.isfinite(ln_eps) and ln_eps > 0, "ln_eps",
               f"must be a finite number > 0, got {ln_eps!r}")
        _check(bias_init in BIAS_INITS, "bias_init", f"must be one of {', '.join(BIAS_INITS)}, got {bias_init!r}")
        # parameters, their gradients and Adam's two moments, float32
        check_memory(4 * FLOAT32 * (hidden_size * (hidden_size + input_size) + 3 * hidden_size), "the FastWeights weights",
                     "hidden_size (cell.hidden_size)")
        self.input_size, self.hidden_size, self.batch_first = input_size, hidden_size, batch_first
        H = hidden_size
        self.U = nn.Linear(input_size, H)
        self.W = nn.Parameter(0.05 * torch.eye(H))
        self.norm = nn.LayerNorm(H, eps=float(ln_eps))
        with torch.no_grad():
            self.U.weight.copy_(0.05 * torch.eye(H, input_size))
            self.U.bias.zero_()
            if bias_init == "glorot_uniform":  # fan_in = fan_out = H for a vector, as TensorFlow computes it
                bound = math.sqrt(6.0 / (2 * H))
                self.U.bias.uniform_(-bound, bound)

    lam = _hyperparameter("lam")
    eta = _hyperparameter("eta")
    inner_steps = _hyperparameter("inner_steps")
    activation = _hyperparameter("activation")
    backend = _hyperparameter("backend")
    a_update = _hyperparameter("a_update")

    def __setstate__(self, state: dict) -> None:
        """Unpickle, also a layer pickled when the hyperparameters were plain attributes."""
        for name in HYPERPARAMETERS:
            if name in state:
                state["_" + name] = state.pop(name)
        super().__setstate__(state)

    def state_spec(self) -> dict[str, tuple[int, ...]]:
        """Per-example shapes of the state components: ``{"h": (H,), "A": (H, H)}``."""
        H = self.hidden_size
        return {"h": (H,), "A": (H, H)}

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

    def forward(self, x: Tensor, state: State | None = None, *, final_state: bool = True) -> tuple[Tensor, State | None]:
        """Unroll over ``x`` (``[B, T, input_size]``, or ``[T, B, input_size]`` unless batch_first).

        Returns the outputs ``[B, T, H]`` (or ``[T, B, H]``) and the final state
        ``{"h": [B, H], "A": [B, H, H]}``; ``state`` defaults to zeros (never materialised:
        the unroll skips the A_0 terms, as it does for a ``crnn_core.interfaces.cell.constant_state`` 0).
        ``final_state=False`` returns ``(outputs, None)`` and skips computing A_T (a B x H x H
        write), for a caller that only reads the outputs.
        """
        if not isinstance(x, Tensor) or x.dim() != 3 or x.shape[-1] != self.input_size:
            raise ValueError(f"FastWeights: x must be a 3-d tensor with {self.input_size} features, "
                             f"got {tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"FastWeights: x must be a floating-point tensor, got {x.dtype}")
        if not self.batch_first:
            x = x.transpose(0, 1)
        if x.shape[1] == 0:
            raise ValueError("FastWeights: x has no time steps (T = 0)")
        outputs, final = self._unroll(self.U(x), state, final_state)
        return (outputs if self.batch_first else outputs.transpose(0, 1)), final

    @property
    def input_projection(self) -> nn.Linear:
        """The input projection ``U`` (its output is the unroll's ``xp``), for ``forward_projected``."""
        return self.U

    def forward_projected(self, xp: Tensor, state: State | None = None, *,
                          final_state: bool = True) -> tuple[Tensor, State | None]:
        """``forward`` from inputs already projected by ``input_projection`` (``[B, T, H]``, batch first)."""
        if not isinstance(xp, Tensor) or xp.dim() != 3 or xp.shape[-1] != self.hidden_size or xp.shape[1] == 0:
            raise ValueError(f"FastWeights: projected inputs must be [B, T > 0, {self.hidden_size}], "
                             f"got {tuple(xp.shape) if isinstance(xp, Tensor) else type(xp).__name__}")
        return self._unroll(xp, state, final_state)

    def _unroll(self, xp: Tensor, state: State | None, final_state: bool) -> tuple[Tensor, State | None]:
        """The unroll from projected inputs ``xp [B, T, H]`` (batch first) and ``state`` (None: zeros)."""
        if state is None:
            h0, A0 = xp.new_zeros(xp.shape[0], self.hidden_size), None
        else:
            check_state("FastWeights", state, self.state_spec(), xp.shape[0])
            h0, A0 = state["h"], (None if is_zero_constant(state["A"]) else state["A"])
        _check_unroll_memory(xp, self.hidden_size, self.inner_steps)
        unroll, _ = self._unroll_for(xp.device)
        if A0 is not None:  # the fused op reads an A_0 tiled over the batch once ([H, H])
            shared = broadcast_source(A0) if unroll is fastweights_fused.fastweights_fused else None
            A0 = A0.contiguous() if shared is None else shared
        outputs, A = unroll(
            xp.contiguous(),
            h0.contiguous(),
            A0,
            self.W,
            self.norm.weight,
            self.norm.bias,
            self.lam,
            self.eta,
            self.inner_steps,
            self.activation,
            self.norm.eps,
            self.a_update,
            final_state=final_state,
        )
        return outputs, ({"h": outputs[:, -1], "A": A} if final_state else None)

    def extra_repr(self) -> str:
        return (f"{self.input_size}, {self.hidden_size}, lam={self.lam}, eta={self.eta}, inner_steps={self.inner_steps}, "
                f"activation={self.activation!r}, batch_first={self.batch_first}, backend={self.backend!r}, "
                f"a_update={self.a_update!r}, ln_eps={self.norm.eps}")


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
