"""The fused op under ``torch.autocast``: it runs (no error, no fallback) and computes in float32.

The op is registered for the AutocastCPU and AutocastCUDA dispatch keys
(csrc/fastweights_op.cpp): float16/bfloat16 inputs are cast to float32, the kernel runs in
float32, the outputs are float32, and the gradients come back in the inputs' dtypes.

Tolerances, against the float32 reference (``fastweights_reference``):
* the op given the same (low-precision) input values cast to float32: forward 3e-5,
  gradients 1e-4 relative to the largest entry -- float32 rounding only, since the op
  itself runs in float32 and sums in another order than the reference (the gradients of low-precision inputs are then rounded to
  their dtype: 1e-2 for bfloat16, 2e-3 for float16);
* a whole fast-weights cell under autocast (its input projection runs in bfloat16) against
  the same cell in float32: 5e-2 relative to the largest output (bfloat16 keeps 8 bits).
"""

from __future__ import annotations

import pytest
import torch

from crnn_plugins.fast_weights import fused as ff
from crnn_plugins.fast_weights.reference import fastweights_reference

LAM, ETA = 0.95, 0.5
GRAD_RTOL = {torch.bfloat16: 1e-2, torch.float16: 2e-3, torch.float32: 1e-4}


pytestmark = pytest.mark.usefixtures("fused_kernel")  # skip or fail as the kernel loads (conftest)


def inputs(B=3, T=6, H=24, device="cpu", seed=0):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    xp, h0, A0 = r(B, T, H), r(B, H), 0.1 * r(B, H, H)
    W = 0.05 * torch.eye(H) + 0.5 * r(H, H) / H**0.5
    gamma, beta = 1 + 0.1 * r(H), 0.1 * r(H)
    up_out, up_A = r(B, T, H), r(B, H, H)
    return [t.to(device) for t in (xp, h0, A0, W, gamma, beta)], up_out.to(device), up_A.to(device)


def rel_err(a, b):
    return ((a.float() - b.float()).abs().max() / (a.float().abs().max() + 1e-12)).item()


def check_autocast_parity(device: str, low: torch.dtype, low_args: tuple[int, ...], act: str, S: int):
    """Args at positions low_args in `low` precision, the rest float32, under autocast(device, low)."""
    args32, up_out, up_A = inputs(device=device)
    mixed = [a.to(low) if i in low_args else a for i, a in enumerate(args32)]
    # the float32 reference sees exactly the values the op sees after its cast
    ref_leaves = [a.detach().float().requires_grad_(True) for a in mixed]
    o_ref, A_ref = fastweights_reference(*ref_leaves, LAM, ETA, S, act)
    g_ref = torch.autograd.grad((o_ref * up_out).sum() + (A_ref * up_A).sum(), ref_leaves)

    leaves = [a.detach().clone().requires_grad_(True) for a in mixed]
    with torch.autocast(device, dtype=low):
        out, A = ff.fastweights_fused(*leaves, LAM, ETA, S, act)
        assert out.dtype == torch.float32 and A.dtype == torch.float32, "the op computes and returns float32"
        loss = (out * up_out).sum() + (A * up_A).sum()
    grads = torch.autograd.grad(loss, leaves)
    assert rel_err(o_ref, out) <= 3e-5
    assert rel_err(A_ref, A) <= 3e-5
    for i, (name, a, b) in enumerate(zip(("xp", "h0", "A0", "W", "gamma", "beta"), g_ref, grads)):
        assert b.dtype == mixed[i].dtype, f"d{name} comes back in its input's dtype"
        assert rel_err(a, b) <= GRAD_RTOL[b.dtype], f"d{name}: {rel_err(a, b):.2e}"


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("S,act", [(1, "relu"), (2, "tanh")])
def test_autocast_cpu_low_precision_projection(low, S, act):
    """The common case: xp (= U x + b) comes out of an autocast Linear in low precision."""
    check_autocast_parity("cpu", low, (0,), act, S)


def test_autocast_cpu_all_inputs_low_precision():
    check_autocast_parity("cpu", torch.bfloat16, (0, 1, 2, 3, 4, 5), "relu", 1)


def test_autocast_cpu_float64_stays_float64():
    """Autocast leaves float64 alone (as PyTorch's own ops do): a float64 call is unchanged."""
    args, _, _ = inputs()
    args = [a.double() for a in args]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, A = ff.fastweights_fused(*args, LAM, ETA, 1, "relu")
    ref, A_ref = fastweights_reference(*args, LAM, ETA, 1, "relu")
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(A, A_ref, rtol=1e-10, atol=1e-10)


def test_autocast_cpu_cell_runs_fused_backend():
    """A fast-weights cell under autocast runs the fused op (no dtype error, no fallback)."""
    from crnn_plugins.cells.fastweights import FastWeightsCell, FastWeightsOptions

    torch.manual_seed(0)
    cell = FastWeightsCell(5, FastWeightsOptions(hidden_size=16, backend="fused", inner_steps=1))
    assert cell.describe_backend().startswith("fused")
    x = torch.randn(4, 7, 5)
    state = {"h": torch.randn(4, 16), "A": 0.1 * torch.randn(4, 16, 16)}
    out32, st32 = cell(x, state)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, st = cell(x, state)  # backend=fused: a dtype the op refused would raise here
    assert out.dtype == torch.float32
    assert rel_err(out32, out) <= 5e-2
    assert rel_err(st32["A"], st["A"]) <= 5e-2
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in cell.parameters())


needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_autocast_cuda_low_precision_projection(low):
    if not ff.device_status("cuda")[0]:
        pytest.skip(ff.device_status("cuda")[1])
    check_autocast_parity("cuda", low, (0,), "tanh", 2)
