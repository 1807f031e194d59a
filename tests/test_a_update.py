"""The two fast-weight updates (cell.a_update): every backend against an independent loop.

``previous``: A_t = lam A_{t-1} + eta h_{t-1} h_{t-1}^T (Ba et al. 2016, crnn's default).
``preliminary``: A_t = lam A_{t-1} + eta f(p_t) f(p_t)^T before the inner loop (the paper
authors' fomorians/contextual_rnn fast_weights_cell.py). ``spec_loop`` is written from
those equations, one example and one step at a time; forward and gradients are compared
in float64 for the reference, the naive loop and the fused CPU op (short sequences and
the chunked path, T > max(64, 2H)).
"""

from __future__ import annotations

import math

import pytest
import torch

from crnn_core import ConfigError
from crnn_core.interfaces.options import build_options
from crnn_plugins.fast_weights import fused as ff
from crnn_plugins.cells.fastweights import FastWeightsCell, FastWeightsOptions
from crnn_plugins.fast_weights.layer import FastWeights
from crnn_plugins.fast_weights.reference import fastweights_naive, fastweights_reference

from .test_fastweights_reference import spec_loop

LAM, ETA = 0.9, 0.5
loop = spec_loop  # the equations, per example and per step (independent of every backend)


def inputs(B=2, T=5, H=6, seed=0, a0=0.3):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float64)  # noqa: E731
    W = 0.05 * torch.eye(H, dtype=torch.float64) + 0.5 * r(H, H) / H**0.5
    return [r(B, T, H), r(B, H), a0 * r(B, H, H), W, 1 + 0.1 * r(H), 0.1 * r(H)]


def outputs_and_grads(fn, args, S, act, eps, a_update, seed=1):
    leaves = [a.detach().clone().requires_grad_(True) for a in args]
    out, A = fn(*leaves, LAM, ETA, S, act, eps, a_update)
    g = torch.Generator().manual_seed(seed)
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum() + \
        (A * torch.randn(A.shape, generator=g, dtype=A.dtype)).sum()
    return out.detach(), A.detach(), torch.autograd.grad(loss, leaves)


def assert_same(expected, got, tol=1e-10):
    (o1, A1, g1), (o2, A2, g2) = expected, got
    torch.testing.assert_close(o2, o1, rtol=tol, atol=tol)
    torch.testing.assert_close(A2, A1, rtol=tol, atol=tol)
    for name, a, b in zip(("xp", "h0", "A0", "W", "gamma", "beta"), g1, g2):
        torch.testing.assert_close(b, a, rtol=tol, atol=tol, msg=f"d{name}")


def test_the_two_updates_differ():
    """A guard for the tests below: the variants give different outputs on the same inputs."""
    args = inputs()
    prev, _ = loop(*args, LAM, ETA, 1, "relu", 1e-5, "previous")
    prel, _ = loop(*args, LAM, ETA, 1, "relu", 1e-5, "preliminary")
    assert (prev - prel).abs().max() > 1e-3


@pytest.mark.parametrize("a_update", ["previous", "preliminary"])
@pytest.mark.parametrize("S,act", [(1, "relu"), (3, "tanh")])
@pytest.mark.parametrize("fn", [fastweights_reference, fastweights_naive], ids=["reference", "naive"])
def test_python_backends_match_the_loop(fn, a_update, S, act):
    args = inputs()
    eps = 1e-12 if S == 1 else 1e-5
    assert_same(outputs_and_grads(loop, args, S, act, eps, a_update),
                outputs_and_grads(fn, args, S, act, eps, a_update))


@pytest.mark.usefixtures("fused_kernel")
@pytest.mark.parametrize("a_update", ["previous", "preliminary"])
@pytest.mark.parametrize("B,T,H,S,act,a0", [
    (2, 5, 6, 1, "relu", 0.3),
    (3, 4, 20, 3, "tanh", 0.0),
    (2, 70, 5, 2, "relu", 0.2),   # chunk length 64: two chunks
    (1, 130, 3, 1, "tanh", 0.3),  # three chunks, the last one partial
])
def test_fused_op_matches_the_loop(a_update, B, T, H, S, act, a0):
    args = inputs(B, T, H, seed=T + H, a0=a0)
    assert_same(outputs_and_grads(loop, args, S, act, 1e-5, a_update),
                outputs_and_grads(ff.fastweights_fused, args, S, act, 1e-5, a_update))


@pytest.mark.usefixtures("fused_kernel")
def test_fused_float32_preliminary_matches_reference():
    args = [a.float() for a in inputs(B=4, T=11, H=50)]
    ref = outputs_and_grads(fastweights_reference, args, 1, "relu", 1e-5, "preliminary")
    got = outputs_and_grads(ff.fastweights_fused, args, 1, "relu", 1e-5, "preliminary")
    torch.testing.assert_close(got[0], ref[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], ref[1], rtol=1e-5, atol=1e-4)
    for a, b in zip(ref[2], got[2]):
        assert (a - b).abs().max() <= 1e-4 * (a.abs().max() + 1e-12)


@pytest.mark.usefixtures("fused_kernel")
@pytest.mark.parametrize("T", [3, 66])
def test_gradcheck_preliminary(T):
    args = [a.requires_grad_(True) for a in inputs(B=1 if T > 64 else 2, T=T, H=3 if T > 64 else 4)]
    assert torch.autograd.gradcheck(
        lambda *a: ff.fastweights_fused(*a, LAM, ETA, 2, "tanh", 1e-5, "preliminary"), args,
        eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.usefixtures("fused_kernel")
def test_opcheck_with_the_a_update_argument():
    args = [a.requires_grad_(True) for a in inputs(B=2, T=3, H=5)]
    op_f, op_b = torch.ops.crnn.fastweights_fwd.default, torch.ops.crnn.fastweights_bwd.default
    torch.library.opcheck(op_f, (*args, LAM, ETA, 2, "tanh", 1e-5, True, "preliminary"))
    plain = [a.detach() for a in args]
    out, _, zs, xhat, rstd = torch.ops.crnn.fastweights_fwd(*plain, LAM, ETA, 2, "relu", 1e-5, True, "preliminary")
    xp, h0, A0, W, gamma, beta = plain
    for need_dA0 in (True, False):
        torch.library.opcheck(op_b, (torch.randn_like(out), torch.randn_like(A0), h0, A0, W, gamma, out, zs, xhat,
                                     rstd, LAM, ETA, 2, "relu", need_dA0, "preliminary"))


@pytest.mark.usefixtures("fused_kernel")
def test_op_refuses_an_unknown_update():
    with pytest.raises(RuntimeError, match="a_update must be 'previous' or 'preliminary', got 'next'"):
        torch.ops.crnn.fastweights_fwd(*inputs(), LAM, ETA, 1, "relu", 1e-5, False, "next")


def test_layer_and_cell_take_the_options():
    torch.manual_seed(0)
    layer = FastWeights(4, 6, a_update="preliminary", ln_eps=1e-12, backend="reference")
    assert layer.norm.eps == 1e-12 and "a_update='preliminary'" in repr(layer)
    x = torch.randn(2, 5, 4, dtype=torch.float64)
    layer = layer.double()
    out, state = layer(x)
    xp = layer.U(x)
    expected, A = loop(xp, torch.zeros(2, 6, dtype=torch.float64), torch.zeros(2, 6, 6, dtype=torch.float64),
                       layer.W, layer.norm.weight, layer.norm.bias, 0.95, 0.5, 1, "relu", 1e-12, "preliminary")
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(state["A"], A)
    with pytest.raises(ValueError, match="a_update must be one of previous, preliminary"):
        FastWeights(4, 6, a_update="later")
    with pytest.raises(ValueError, match="ln_eps must be a finite number > 0"):
        FastWeights(4, 6, ln_eps=0.0)
    opts = build_options(FastWeightsOptions, {"a_update": "preliminary", "ln_eps": "1e-12", "backend": "reference"},
                         "cell")
    cell = FastWeightsCell(3, opts)
    assert cell.a_update == "preliminary" and cell.norm.eps == 1e-12
    with pytest.raises(ConfigError, match="cell.a_update: 'later' is not one of previous, preliminary"):
        build_options(FastWeightsOptions, {"a_update": "later"}, "cell")
    with pytest.raises(ConfigError, match="ln_eps must be > 0"):
        build_options(FastWeightsOptions, {"ln_eps": "0"}, "cell")


@pytest.mark.parametrize("bias_init, alive", [("zeros", False), ("glorot_uniform", True)])
def test_the_authors_zero_start_needs_their_random_bias(bias_init, alive):
    """The authors' ART model starts with a zero embedding and (zero init) a zero state: with a zero
    input bias every pre-activation is exactly 0, ReLU passes no gradient there and nothing ever
    trains; their bias has TensorFlow's default Glorot-uniform init, which breaks the symmetry."""
    torch.manual_seed(0)
    layer = FastWeights(100, 50, a_update="preliminary", ln_eps=1e-12, bias_init=bias_init, backend="reference")
    bound = math.sqrt(3.0 / 50)
    assert float(layer.U.bias.abs().max()) <= bound and (float(layer.U.bias.abs().max()) > bound / 2) == alive
    x = torch.zeros(4, 11, 100, requires_grad=True)  # the zero embedding of any sequence
    out, _ = layer(x)
    (out * torch.randn_like(out)).sum().backward()
    assert bool(out.abs().sum() > 0) == alive
    assert bool(x.grad.abs().sum() > 0) == alive and bool(layer.U.bias.grad.abs().sum() > 0) == alive
