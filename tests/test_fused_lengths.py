"""Variable lengths: each example of a right-padded batch is computed exactly as if it were alone.

Checked for the reference and naive unrolls, for ``fastweights_unroll``'s validation of
``lengths``, and for the fused op on every compiled CPU instruction set through its three
routes: per example (A_T wanted), the batch in the vector lanes (whole groups, no A_T) and the
chunked long-sequence form (T above the chunk length 64). The padding holds huge values, NaN
and inf, which must change nothing. The CUDA kernels are checked through their CPU emulation
(tests/test_cuda_emulation.py).
"""

from __future__ import annotations

import pytest
import torch

from crnn_plugins.fast_weights import fused as ff
from crnn_plugins.fast_weights.layer import fastweights_unroll
from crnn_plugins.fast_weights.reference import fastweights_naive, fastweights_reference, last_outputs

LAM, ETA = 0.9, 0.5


def _params(B: int, T: int, H: int, *, shared_a0: bool | None, seed: int = 0, dtype=torch.float64):
    """xp, h0, A0 (None, [H, H] or [B, H, H]), W, gamma, beta; every tensor requires grad."""
    g = torch.Generator().manual_seed(seed)
    def r(*shape, scale=1.0):
        return (scale * torch.randn(*shape, generator=g, dtype=dtype)).requires_grad_()
    A0 = None if shared_a0 is None else r(*((H, H) if shared_a0 else (B, H, H)), scale=0.1)
    return [r(B, T, H), r(B, H, scale=0.5), A0, r(H, H, scale=0.3), r(H, scale=0.2).detach().add_(1).requires_grad_(),
            r(H, scale=0.1)]


def _garbage(xp: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """``xp`` with large values and NaN/inf at every padded position (a leaf requiring grad)."""
    bad = xp.detach().clone()
    for b, n in enumerate(lengths):
        if n < bad.shape[1]:
            bad[b, n:] = 1e6
            bad[b, n, 0] = float("nan")
            bad[b, -1, -1] = float("inf")
    return bad.requires_grad_()


def _loss(outputs, h, A_T, weights, rows=slice(None), steps=slice(None)):
    """A random linear function of the outputs, the final h and A_T if any (``weights`` from ``_weights``)."""
    w_out, w_h, w_A = weights
    loss = (outputs * w_out[rows, steps]).sum() + (h * w_h[rows]).sum()
    return loss if A_T is None else loss + (A_T * w_A[rows]).sum()


def _weights(B, T, H, dtype):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(B, T, H, generator=g, dtype=dtype), torch.randn(B, H, generator=g, dtype=dtype),
            torch.randn(B, H, H, generator=g, dtype=dtype))


def check_against_alone(unroll, B, T, H, lengths, *, shared_a0, a_update, inner_steps, tol=1e-10, dtype=torch.float64,
                        **kwargs):
    """Run ``unroll`` on a padded batch and each example alone on its own steps; compare everything."""
    xp, h0, A0, W, gamma, beta = _params(B, T, H, shared_a0=shared_a0, dtype=dtype)
    xp_bad = _garbage(xp, lengths)
    args = (LAM, ETA, inner_steps, "relu", 1e-5, a_update)
    lt = torch.tensor(lengths, dtype=torch.int64)
    out, A_T = unroll(xp_bad, h0, A0, W, gamma, beta, *args, lengths=lt, **kwargs)
    weights = _weights(B, T, H, out.dtype)
    grads = torch.autograd.grad(_loss(out, last_outputs(out, lt), A_T, weights),
                                [t for t in (xp_bad, h0, A0, W, gamma, beta) if t is not None])
    dxp, dh0 = grads[0], grads[1]
    dA0 = grads[2] if A0 is not None else None
    for b, n in enumerate(lengths):
        assert torch.equal(out[b, n:], torch.zeros_like(out[b, n:])), "outputs after the end must be zero"
        assert torch.equal(dxp[b, n:], torch.zeros_like(dxp[b, n:])), "gradient at padded steps must be zero"
    # alone: each example on its own first steps; the loss is the same function of its outputs
    gW = torch.zeros_like(W)
    gg = torch.zeros_like(gamma)
    gb = torch.zeros_like(beta)
    gA0_shared = None if A0 is None else torch.zeros_like(A0)
    for b, n in enumerate(lengths):
        xb = xp[b:b + 1, :n].detach().clone().requires_grad_()
        hb = h0[b:b + 1].detach().clone().requires_grad_()
        Ab = None
        if A0 is not None:
            Ab = (A0 if shared_a0 else A0[b:b + 1]).detach().clone().requires_grad_()
        o, A = unroll(xb, hb, Ab, W, gamma, beta, *args, **kwargs)
        torch.testing.assert_close(o[0], out[b, :n], rtol=tol, atol=tol)
        if A is not None:
            torch.testing.assert_close(A[0], A_T[b], rtol=tol, atol=tol)
        loss = _loss(o, o[:, -1], A, weights, slice(b, b + 1), slice(0, n))
        wrt = [xb, hb, W, gamma, beta] + ([Ab] if Ab is not None else [])
        g = torch.autograd.grad(loss, wrt)
        torch.testing.assert_close(g[0][0], dxp[b, :n], rtol=tol, atol=tol)
        torch.testing.assert_close(g[1][0], dh0[b], rtol=tol, atol=tol)
        gW, gg, gb = gW + g[2], gg + g[3], gb + g[4]
        if Ab is not None:
            if shared_a0:
                gA0_shared = gA0_shared + g[5]
            else:
                torch.testing.assert_close(g[5][0], dA0[b], rtol=tol, atol=tol)
    k = 3 if A0 is not None else 2
    torch.testing.assert_close(gW, grads[k], rtol=tol, atol=tol)
    torch.testing.assert_close(gg, grads[k + 1], rtol=tol, atol=tol)
    torch.testing.assert_close(gb, grads[k + 2], rtol=tol, atol=tol)
    if shared_a0:
        torch.testing.assert_close(gA0_shared, dA0, rtol=tol, atol=tol)


@pytest.mark.parametrize("unroll", [fastweights_reference, fastweights_naive], ids=["reference", "naive"])
@pytest.mark.parametrize("a_update", ["previous", "preliminary"])
@pytest.mark.parametrize("shared_a0", [None, False])
def test_python_unrolls_match_each_example_alone(unroll, a_update, shared_a0):
    check_against_alone(unroll, 3, 5, 4, [5, 2, 1], shared_a0=shared_a0, a_update=a_update, inner_steps=2)


@pytest.mark.parametrize("a_update", ["previous", "preliminary"])
def test_unroll_reference_shared_a0(a_update):
    check_against_alone(fastweights_unroll, 3, 4, 3, [2, 4, 1], shared_a0=True, a_update=a_update, inner_steps=1,
                        backend="reference")


def test_lengths_equal_to_steps_is_no_lengths():
    xp, h0, A0, W, gamma, beta = _params(2, 4, 3, shared_a0=False)
    args = (xp, h0, A0, W, gamma, beta, LAM, ETA, 1)
    for unroll in (fastweights_reference, fastweights_naive):
        out, A = unroll(*args)
        out_l, A_l = unroll(*args, lengths=torch.tensor([4, 4]))
        assert torch.equal(out, out_l) and torch.equal(A, A_l)


def test_last_outputs_gathers_each_final_step():
    out = torch.arange(2 * 3 * 2.0).view(2, 3, 2)
    assert torch.equal(last_outputs(out, torch.tensor([2, 3])), torch.stack([out[0, 1], out[1, 2]]))
    assert torch.equal(last_outputs(out, None), out[:, -1])


@pytest.mark.parametrize("lengths, match", [
    (torch.tensor([1, 2, 3]), "one value per example"),
    (torch.tensor([[1, 2]]), "one value per example"),
    (torch.tensor([1.0, 2.0]), "int64"),
    (torch.tensor([True, True]), "int64"),
    (torch.tensor([1, 2], dtype=torch.int32), "int64"),
    (torch.tensor([0, 2]), r"in \[1, 4\]"),
    (torch.tensor([1, 5]), r"in \[1, 4\]"),
    ([1, 2.0], "ints"),
    ("12", "list of ints"),
    (torch.tensor([1, 2], device="meta"), "device"),
])
def test_bad_lengths_are_refused(lengths, match):
    xp, h0, A0, W, gamma, beta = _params(2, 4, 3, shared_a0=None)
    with pytest.raises(ValueError, match="lengths") as info:
        fastweights_unroll(xp, h0, A0, W, gamma, beta, LAM, ETA, 1, lengths=lengths, backend="reference")
    assert info.match(match)


def test_lengths_as_a_list():
    xp, h0, A0, W, gamma, beta = _params(2, 4, 3, shared_a0=None)
    out, A = fastweights_unroll(xp, h0, A0, W, gamma, beta, LAM, ETA, 1, lengths=[3, 1], backend="reference")
    ref, A_ref = fastweights_reference(xp, h0, A0, W, gamma, beta, LAM, ETA, 1, lengths=torch.tensor([3, 1]))
    assert torch.equal(out, ref) and torch.equal(A, A_ref)


# --- the fused op ---------------------------------------------------------------------------

from .test_fused_op import each_cpu_path  # noqa: E402, F401  (fixture)

# route: (B, T, H, lengths, final_state). "lanes": 16 examples fill whole groups of 16 float or
# 8 (4, 2) double lanes, some groups ending before T; "chunked": T above the chunk length 64,
# with ends before, at and after a chunk boundary.
ROUTES = {
    "example": (4, 5, 6, [5, 2, 1, 4], True),
    "lanes": (16, 5, 6, [5, 2, 1, 3, 5, 4, 2, 1, 4, 4, 3, 1, 2, 2, 1, 3], False),
    "chunked": (4, 70, 6, [66, 64, 70, 3], True),
}


@pytest.mark.usefixtures("fused_kernel")
@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("a_update", ["previous", "preliminary"])
@pytest.mark.parametrize("inner_steps", [1, 2])
def test_fused_matches_each_example_alone(each_cpu_path, route, a_update, inner_steps):
    B, T, H, lengths, final_state = ROUTES[route]
    for shared_a0 in ((None, True) if route == "lanes" else (False, True)):
        check_against_alone(ff.fastweights_fused, B, T, H, lengths, shared_a0=shared_a0, a_update=a_update,
                            inner_steps=inner_steps, final_state=final_state)


@pytest.mark.usefixtures("fused_kernel")
@pytest.mark.parametrize("route", ["example", "lanes"])
def test_fused_float32_matches_each_example_alone(route):
    B, T, H, lengths, final_state = ROUTES[route]
    check_against_alone(ff.fastweights_fused, B, T, H, lengths, shared_a0=True, a_update="previous", inner_steps=2,
                        final_state=final_state, dtype=torch.float32, tol=1e-5)


@pytest.mark.usefixtures("fused_kernel")
@pytest.mark.parametrize("route", list(ROUTES))
def test_fused_lengths_all_steps_is_exactly_no_lengths(route):
    B, T, H, _, final_state = ROUTES[route]
    inputs = _params(B, T, H, shared_a0=True)
    full = torch.full((B,), T, dtype=torch.int64)
    runs = []
    for lengths in (None, full):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        out, A = ff.fastweights_fused(*leaves, LAM, ETA, 2, final_state=final_state, lengths=lengths)
        loss = out.square().sum() + (0 if A is None else A.square().sum())
        runs.append([out, A, *torch.autograd.grad(loss, leaves)])
    for a, b in zip(*runs):
        assert (a is None and b is None) or torch.equal(a, b)


@pytest.mark.usefixtures("fused_kernel")
def test_fused_matches_the_reference_with_lengths():
    xp, h0, A0, W, gamma, beta = _params(3, 6, 5, shared_a0=False)
    lengths = torch.tensor([3, 6, 1])
    args = (xp, h0, A0, W, gamma, beta, LAM, ETA, 2, "tanh", 1e-5, "preliminary")
    out, A = ff.fastweights_fused(*args, lengths=lengths)
    ref, A_ref = fastweights_reference(*args, lengths=lengths)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(A, A_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.usefixtures("fused_kernel")
def test_fused_gradcheck_and_opcheck_with_lengths():
    xp, h0, A0, W, gamma, beta = (t.detach() for t in _params(3, 4, 3, shared_a0=False))
    lengths = torch.tensor([2, 4, 1])
    inputs = [t.clone().requires_grad_() for t in (xp, h0, A0, W, gamma, beta)]

    def f(*ts):
        out, A = ff.fastweights_fused(*ts, LAM, ETA, 2, "tanh", lengths=lengths)
        return out, A

    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6)
    args = (xp, h0, A0, W, gamma, beta, LAM, ETA, 2, "tanh", 1e-5, True, "previous", True, lengths)
    torch.library.opcheck(torch.ops.crnn.fastweights_fwd.default, args)


@pytest.mark.usefixtures("fused_kernel")
@pytest.mark.parametrize("lengths, match", [
    (torch.tensor([1, 2, 3]), "one value per example"),
    (torch.tensor([1.0, 2.0]), "int64"),
    (torch.tensor([True, True]), "int64"),
    (torch.tensor([0, 2]), r"in \[1, 4\]"),
    (torch.tensor([1, 5]), r"in \[1, 4\]"),
])
def test_fused_op_refuses_bad_lengths(lengths, match):
    xp, h0, A0, W, gamma, beta = (t.detach() for t in _params(2, 4, 3, shared_a0=False))
    with pytest.raises(RuntimeError, match=f"lengths.*{match}|{match}.*lengths"):
        torch.ops.crnn.fastweights_fwd(xp, h0, A0, W, gamma, beta, LAM, ETA, 1, "relu", 1e-5, False, "previous",
                                       True, lengths)


@pytest.mark.usefixtures("fused_kernel")
def test_fused_double_backward_with_lengths_matches_the_reference():
    """With create_graph=True the fused op's backward goes through the reference, with the lengths."""
    inputs = _params(3, 4, 3, shared_a0=False)
    lengths = torch.tensor([2, 4, 1])
    hvps = []
    for unroll in (ff.fastweights_fused, fastweights_reference):
        leaves = [t.detach().clone().requires_grad_() for t in inputs]
        out, A = unroll(*leaves, LAM, ETA, 1, "tanh", lengths=lengths)
        (g_xp,) = torch.autograd.grad(out.square().sum() + A.square().sum(), leaves[0], create_graph=True)
        hvps.append(torch.autograd.grad(g_xp.sum(), leaves[3])[0])
        assert torch.equal(g_xp[0, 2:], torch.zeros_like(g_xp[0, 2:]))
    torch.testing.assert_close(hvps[0], hvps[1], rtol=1e-8, atol=1e-10)
