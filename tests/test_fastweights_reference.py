"""The fast-weights reference backend against the fast-weights equations, written out directly."""

import pytest
import torch

from crnn_core.interfaces.options import build_options
from crnn_plugins.cells.fastweights import FastWeightsCell, FastWeightsOptions
from crnn_plugins.fast_weights.reference import fastweights_naive, fastweights_reference


def spec_loop(xp, h0, A0, W, gamma, beta, lam, eta, S, act, eps=1e-5, a_update="previous"):
    """The per-example equations, one example and one step at a time.

    ``a_update="preliminary"`` updates A with f(p_t) instead of h_{t-1} (the paper authors' code).
    """
    f = torch.relu if act == "relu" else torch.tanh
    B, T, H = xp.shape
    outs, finals = [], []
    for b in range(B):
        h, A = h0[b], A0[b]
        seq = []
        for t in range(T):
            p = W @ h + xp[b, t]
            z = f(p)
            key = h if a_update == "previous" else z
            A = lam * A + eta * torch.outer(key, key)
            for _ in range(S):
                u = p + A @ z
                u = (u - u.mean()) / torch.sqrt(u.var(unbiased=False) + eps) * gamma + beta
                z = f(u)
            h = z
            seq.append(h)
        outs.append(torch.stack(seq))
        finals.append(A)
    return torch.stack(outs), torch.stack(finals)


def random_inputs(B=3, T=5, H=6, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return r(B, T, H), r(B, H), 0.3 * r(B, H, H), 0.3 * r(H, H), 1 + 0.1 * r(H), 0.1 * r(H)


@pytest.mark.parametrize("S", [1, 3])
@pytest.mark.parametrize("act", ["relu", "tanh"])
@pytest.mark.parametrize("fn", [fastweights_reference, fastweights_naive])
def test_backends_match_the_equations(fn, S, act):
    args = random_inputs()
    expected_out, expected_A = spec_loop(*args, 0.9, 0.5, S, act)
    out, A = fn(*args, 0.9, 0.5, S, act)
    torch.testing.assert_close(out, expected_out, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(A, expected_A, rtol=1e-10, atol=1e-10)


def test_single_step_and_gradients():
    args = [a.clone().requires_grad_(True) for a in random_inputs(T=1)]
    out, A = fastweights_reference(*args, 0.95, 0.5, 1, "relu")
    assert out.shape == (3, 1, 6) and A.shape == (3, 6, 6)
    (out.sum() + A.sum()).backward()
    assert all(a.grad is not None and torch.isfinite(a.grad).all() for a in args)


def test_cell_initialisation_and_shapes():
    opts = build_options(FastWeightsOptions, {"hidden_size": "8", "backend": "reference"}, "cell")
    cell = FastWeightsCell(12, opts)
    assert torch.equal(cell.W, 0.05 * torch.eye(8))
    assert torch.equal(cell.U.weight, 0.05 * torch.eye(8, 12)) and torch.equal(cell.U.bias, torch.zeros(8))
    assert cell.state_spec() == {"h": (8,), "A": (8, 8)}
    state = {"h": torch.zeros(4, 8), "A": torch.zeros(4, 8, 8)}
    out, final = cell(torch.randn(4, 7, 12), state)
    assert out.shape == (4, 7, 8) and final["A"].shape == (4, 8, 8)
    torch.testing.assert_close(final["h"], out[:, -1])
