"""Pure-PyTorch fast-weights math (Ba et al. 2016): the `reference` backend and the naive loop.

Both functions compute, for t = 1..T (xp_t = U x_t + b precomputed for all t):

    p_t   = W h_{t-1} + xp_t
    z_0   = f(p_t)
    A_t   = lam * A_{t-1} + eta * k_t k_t^T
    z_{s+1} = f(LayerNorm(p_t + A_t z_s)), s = 0..S-1;  h_t = z_S

and return (outputs h_1..h_T as [B, T, H], A_T as [B, H, H]). Shared conventions of
every backend: ``A0=None`` is A_0 = 0 (not materialised), and ``final_state=False``
returns ``(outputs, None)`` without computing A_T. ``lengths`` (a 1-D int64 tensor of B
values in [1, T], see ``check_lengths``; ``fastweights_reference`` checks it, ``reference_unroll``
takes it as checked by the caller) runs example b on its first ``lengths[b]`` steps
only, exactly as if it were alone: its outputs after that are zero, its A_T is the one after
its own last step, and its padded inputs (even NaN) affect nothing; its final h is
``last_outputs(outputs, lengths)``. The key k_t that
updates A is chosen by ``a_update`` (``A_UPDATES``):

* ``"previous"`` (default, Ba et al. 2016): k_t = h_{t-1};
* ``"preliminary"`` (the paper authors' code, fomorians/contextual_rnn
  ``fast_weights_cell.py``): k_t = z_0 = f(p_t), the current preliminary vector, so
  A is updated *before* the inner loop of step t.

``fastweights_reference`` never materialises A_t inside the loop: it uses
A_t z = lam^t A_0 z + eta * sum_{j<t} lam^(t-1-j) k_{j+1} (k_{j+1} . z) and builds
A_T once at the end. ``fastweights_naive`` updates an explicit A every step, as most
public implementations do; it is kept for tests and the benchmark.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from crnn_core.layers.sequences import check_lengths

ACTIVATIONS = ("relu", "tanh")
A_UPDATES = ("previous", "preliminary")


def check_a_update(a_update: str) -> bool:
    """Validate ``a_update``; True for the authors' ``"preliminary"`` update."""
    if a_update not in A_UPDATES:
        raise ValueError(f"a_update must be one of {', '.join(A_UPDATES)}, got {a_update!r}")
    return a_update == "preliminary"


def last_outputs(outputs: Tensor, lengths: Tensor | None) -> Tensor:
    """The final h of each example: ``outputs[b, lengths[b] - 1]`` (``outputs[:, -1]`` without lengths)."""
    if lengths is None:
        return outputs[:, -1]
    index = (lengths - 1).view(-1, 1, 1).expand(-1, 1, outputs.shape[-1])
    return outputs.gather(1, index).squeeze(1)


def _step_mask(lengths: Tensor, steps: int) -> Tensor:
    """``[B, T]`` bool: True where step t (0-based) is inside example b (t < lengths[b])."""
    return torch.arange(steps, device=lengths.device) < lengths.unsqueeze(1)


def _activation(name: str):
    if name == "relu":
        return torch.relu
    if name == "tanh":
        return torch.tanh
    raise ValueError(f"activation must be one of {ACTIVATIONS}, got {name!r}")


def fastweights_reference(
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
    final_state: bool = True,
    lengths: Tensor | list[int] | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Fast-weights unroll in "attention form"; see the module docstring for the equations.
    ``lengths`` is checked here (``check_lengths``), then ``reference_unroll`` runs."""
    lengths = check_lengths(lengths, xp.shape[0], xp.shape[1], xp.device)
    return reference_unroll(xp, h0, A0, W, gamma, beta, lam, eta, inner_steps, activation, eps, a_update,
                            final_state=final_state, lengths=lengths)


def reference_unroll(
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
    final_state: bool = True,
    lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Fast-weights unroll in "attention form" (the module docstring has the equations), with
    ``lengths`` already checked (``check_lengths``): what the layer and ``fastweights_unroll`` call."""
    f = _activation(activation)
    preliminary = check_a_update(a_update)
    B, T, H = xp.shape
    if lengths is not None:  # padded steps read zeros (torch.where: a NaN there cannot leak)
        valid = _step_mask(lengths, T)
        xp = torch.where(valid.unsqueeze(-1), xp, xp.new_zeros(()))
    hs = [] if preliminary else [h0]  # the keys k_1 .. k_t (h_0 .. h_{t-1}, or f(p_1) .. f(p_t))
    h = h0
    outputs = []
    WT = W.t()
    decays = xp.new_tensor([eta * lam ** k for k in range(T - 1, -1, -1)])  # eta lam^(T-1) .. eta lam^0
    # Products with tiny per-example matrices are written as broadcast multiply + sum:
    # on the CPU this is 2-3x faster than torch.bmm's per-example GEMV (see docs/kernels.md).
    for t in range(1, T + 1):
        p = torch.addmm(xp[:, t - 1], h, WT)
        z = f(p)
        if preliminary:
            hs.append(z)
        past = torch.stack(hs, dim=1)  # [B, t, H]
        decay = decays[T - t:]  # [t]: eta lam^(t-1-tau), tau = 0 .. t-1
        lam_t = lam**t
        for _ in range(inner_steps):
            scores = (past * z.unsqueeze(1)).sum(-1) * decay  # [B, t]: eta lam^(t-1-tau) h_tau . z
            Az = (scores.unsqueeze(-1) * past).sum(1)
            if A0 is not None:
                Az = Az + lam_t * (A0 * z.unsqueeze(1)).sum(-1)
            z = f(F.layer_norm(p + Az, (H,), gamma, beta, eps))
        h = z
        if not preliminary:
            hs.append(h)
        outputs.append(h)
    out = torch.stack(outputs, dim=1)
    if lengths is not None:
        out = torch.where(valid.unsqueeze(-1), out, out.new_zeros(()))
    if not final_state:
        return out, None
    past = torch.stack(hs[:T], dim=1)  # k_1 .. k_T
    if lengths is None:
        A_T = torch.bmm(past.transpose(1, 2) * decays, past)
        if A0 is not None:
            A_T = (lam**T) * A0 + A_T
        return out, A_T
    # example b: eta lam^(L_b-1-j) for its keys j < L_b (decays[T - L_b + j]), none after
    past = torch.where(valid.unsqueeze(-1), past, past.new_zeros(()))
    index = (torch.arange(T, device=xp.device) + (T - lengths).unsqueeze(1)).clamp(max=T - 1)
    own_decays = torch.where(valid, decays[index], decays.new_zeros(()))  # [B, T]
    A_T = torch.bmm(past.transpose(1, 2) * own_decays.unsqueeze(1), past)
    if A0 is not None:
        lam_powers = xp.new_tensor([lam**k for k in range(T + 1)])
        A_T = lam_powers[lengths].view(B, 1, 1) * A0 + A_T
    return out, A_T


def fastweights_naive(
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
    final_state: bool = True,
    lengths: Tensor | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Fast-weights unroll that materialises A_t at every step (the common public implementation)."""
    f = _activation(activation)
    preliminary = check_a_update(a_update)
    B, T, H = xp.shape
    lengths = check_lengths(lengths, B, T, xp.device)
    valid = None if lengths is None else _step_mask(lengths, T)
    h, A = h0, (xp.new_zeros(B, H, H) if A0 is None else A0)
    outputs = []
    for t in range(T):
        xp_t = xp[:, t] if valid is None else torch.where(valid[:, t, None], xp[:, t], xp.new_zeros(()))
        p = xp_t + h @ W.t()
        z = f(p)
        key = z if preliminary else h
        A_next = lam * A + eta * torch.bmm(key.unsqueeze(2), key.unsqueeze(1))
        for _ in range(inner_steps):
            Az = torch.bmm(A_next, z.unsqueeze(-1)).squeeze(-1)
            z = f(F.layer_norm(p + Az, (H,), gamma, beta, eps))
        if valid is None:
            h, A = z, A_next
            outputs.append(h)
        else:  # an example past its end keeps its state and outputs zeros
            h = torch.where(valid[:, t, None], z, h)
            A = torch.where(valid[:, t, None, None], A_next, A)
            outputs.append(torch.where(valid[:, t, None], z, z.new_zeros(())))
    return torch.stack(outputs, dim=1), (A if final_state else None)
