"""The fused fast-weights op (csrc/, crnn_plugins/fast_weights/fused.py) against the reference.

Tolerances: float64 results must match the reference to 1e-10 (relative and absolute);
float32 forward outputs to 1e-5 and gradients to 1e-4 relative to the largest gradient
entry (the kernel sums in a different order from the reference's matrix products).

The first use compiles the extension unless ``pip install -e .`` prebuilt it (about a
minute, once: the build is cached, see docs/kernels.md). With CRNN_NO_FUSED=1 these
tests are skipped; otherwise a kernel that fails to load is a test failure.
"""

from __future__ import annotations


import os
import sys

import pytest
import torch

from crnn_plugins.fast_weights import fused as ff
from crnn_plugins.fast_weights.reference import fastweights_naive, fastweights_reference

LAM, ETA = 0.95, 0.5


pytestmark = pytest.mark.usefixtures("fused_kernel")  # skip or fail as the kernel loads (conftest)

CPU_PATHS = ("baseline", "avx2", "avx512")  # crnn_plugins/fast_weights/cpu_isa.py X86_PATHS


@pytest.fixture(params=CPU_PATHS)
def each_cpu_path(request, fused_kernel):
    """Run the test once on every compiled CPU path this CPU can execute (docs/kernels.md)."""
    info = ff.build_info()
    if request.param not in info["cpu_paths"]:
        pytest.skip(f"the {request.param} path was not compiled (compiled: {info['cpu_paths']})")
    if request.param not in info["cpu_paths_runnable"]:
        pytest.skip(f"this CPU cannot run the {request.param} path")
    assert ff.select_cpu_path(request.param) == request.param
    try:
        yield request.param
    finally:
        ff.select_cpu_path(None)  # back to the best path for the other tests


def make_inputs(B=3, T=5, H=7, dtype=torch.float64, seed=0, a0_scale=0.2, device="cpu"):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    xp = r(B, T, H)
    h0 = r(B, H)
    A0 = a0_scale * r(B, H, H)
    W = 0.05 * torch.eye(H, dtype=dtype) + 0.5 * r(H, H) / H**0.5
    gamma = 1 + 0.1 * r(H)
    beta = 0.1 * r(H)
    return [t.to(device) for t in (xp, h0, A0, W, gamma, beta)]


def run_both(args, S, act, lam=LAM, eta=ETA, grads=True, seed=1):
    """Outputs and input gradients of the reference and the fused op for the same random loss."""
    results = []
    g = torch.Generator().manual_seed(seed)
    upstream = None
    for fn in (fastweights_reference, ff.fastweights_fused):
        leaves = [a.detach().clone().requires_grad_(grads) for a in args]
        out, A = fn(*leaves, lam, eta, S, act)
        if upstream is None:
            upstream = (torch.randn(out.shape, generator=g, dtype=out.dtype).to(out.device),
                        torch.randn(A.shape, generator=g, dtype=A.dtype).to(A.device))
        gs = None
        if grads:
            loss = (out * upstream[0]).sum() + (A * upstream[1]).sum()
            gs = torch.autograd.grad(loss, leaves)
        results.append((out.detach(), A.detach(), gs))
    return results


def assert_grads_close(ref, got, rtol, what=""):
    names = ("xp", "h0", "A0", "W", "gamma", "beta")
    for name, a, b in zip(names, ref, got):
        scale = a.abs().max().item() + 1e-12
        err = (a - b).abs().max().item() / scale
        assert err <= rtol, f"{what} d{name}: relative error {err:.2e} > {rtol:.0e}"


@pytest.mark.usefixtures("each_cpu_path")
@pytest.mark.parametrize("S", [1, 3])
@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_parity_float64(S, act):
    (o_ref, A_ref, g_ref), (o, A, g) = run_both(make_inputs(), S, act)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(A, A_ref, rtol=1e-10, atol=1e-10)
    assert_grads_close(g_ref, g, 1e-10, f"float64 S={S} {act}")


@pytest.mark.usefixtures("each_cpu_path")
@pytest.mark.parametrize("S", [1, 3])
@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_parity_float32(S, act):
    args = make_inputs(B=4, T=11, H=50, dtype=torch.float32)
    (o_ref, A_ref, g_ref), (o, A, g) = run_both(args, S, act)
    torch.testing.assert_close(o, o_ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(A, A_ref, rtol=1e-5, atol=1e-4)
    assert_grads_close(g_ref, g, 1e-4, f"float32 S={S} {act}")


@pytest.mark.usefixtures("each_cpu_path")
@pytest.mark.parametrize(
    "B,T,H,S",
    [(2, 1, 16, 1), (2, 1, 5, 3), (1, 3, 256, 1), (2, 2, 256, 3), (2, 4, 130, 2), (5, 25, 3, 1)],
)
def test_parity_shapes(B, T, H, S):
    args = make_inputs(B=B, T=T, H=H, dtype=torch.float64, seed=H)
    (o_ref, A_ref, g_ref), (o, A, g) = run_both(args, S, "relu")
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(A, A_ref, rtol=1e-10, atol=1e-10)
    assert_grads_close(g_ref, g, 1e-10, f"B={B} T={T} H={H} S={S}")


@pytest.mark.usefixtures("each_cpu_path")
@pytest.mark.parametrize("B,T,H,S,act,a0", [
    (2, 150, 8, 1, "relu", 0.2),   # chunk length 64: three chunks, the last one partial
    (2, 129, 8, 3, "tanh", 0.3),   # one step into the third chunk, S > 1
    (2, 128, 5, 2, "relu", 0.0),   # exactly two full chunks, zero A0 (the first base is zero)
    (2, 140, 40, 1, "tanh", 0.1),  # chunk length 2H = 80
])
def test_parity_long_sequences_in_chunks(B, T, H, S, act, a0):
    """T above the chunk length (max(64, 2H)): A_t is materialised every chunk (linear in T)."""
    args = make_inputs(B=B, T=T, H=H, a0_scale=a0)
    (o_ref, A_ref, g_ref), (o, A, g) = run_both(args, S, act)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(A, A_ref, rtol=1e-10, atol=1e-10)
    assert_grads_close(g_ref, g, 1e-10, "chunked")


@pytest.mark.parametrize("lam", [0.95, 0.0])
def test_gradcheck_across_chunks(lam):
    args = [a.requires_grad_(True) for a in make_inputs(B=1, T=66, H=3)]
    assert torch.autograd.gradcheck(lambda *a: ff.fastweights_fused(*a, lam, ETA, 2, "tanh"), args)


@pytest.mark.parametrize("lam,eta", [(0.0, 0.5), (1.0, 0.0), (0.5, 2.0)])
def test_parity_decay_edge_cases(lam, eta):
    (o_ref, A_ref, g_ref), (o, A, g) = run_both(make_inputs(T=4), 2, "relu", lam=lam, eta=eta)
    torch.testing.assert_close(o, o_ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(A, A_ref, rtol=1e-10, atol=1e-10)
    assert_grads_close(g_ref, g, 1e-10, f"lam={lam} eta={eta}")


def test_zero_A0_and_naive_agree():
    args = make_inputs(B=2, T=6, H=9, a0_scale=0.0)
    out, A = ff.fastweights_fused(*args, LAM, ETA, 2, "tanh")
    out_n, A_n = fastweights_naive(*args, LAM, ETA, 2, "tanh")
    torch.testing.assert_close(out, out_n, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(A, A_n, rtol=1e-10, atol=1e-10)


def test_gradients_for_a_subset_of_inputs_and_outputs():
    xp, h0, A0, W, gamma, beta = make_inputs()
    W.requires_grad_(True)
    A0.requires_grad_(False)
    out, A = ff.fastweights_fused(xp, h0, A0, W, gamma, beta, LAM, ETA, 1)
    (gW,) = torch.autograd.grad(out[:, -1].pow(2).sum(), [W])  # A_T unused: its grad is None
    W_ref = W.detach().clone().requires_grad_(True)
    out_r, _ = fastweights_reference(xp, h0, A0, W_ref, gamma, beta, LAM, ETA, 1)
    (gW_ref,) = torch.autograd.grad(out_r[:, -1].pow(2).sum(), [W_ref])
    torch.testing.assert_close(gW, gW_ref, rtol=1e-10, atol=1e-10)
    # only A_T used
    W2 = W.detach().clone().requires_grad_(True)
    _, A = ff.fastweights_fused(xp, h0, A0, W2, gamma, beta, LAM, ETA, 1)
    W2r = W.detach().clone().requires_grad_(True)
    _, A_r = fastweights_reference(xp, h0, A0, W2r, gamma, beta, LAM, ETA, 1)
    torch.testing.assert_close(torch.autograd.grad(A.sum(), [W2])[0],
                               torch.autograd.grad(A_r.sum(), [W2r])[0], rtol=1e-10, atol=1e-10)


def test_no_grad_saves_nothing():
    args = make_inputs()
    res = torch.ops.crnn.fastweights_fwd(*args, LAM, ETA, 2, "relu", 1e-5, False)
    assert [t.numel() for t in res[2:]] == [0, 0, 0]
    with torch.no_grad():
        out, A = ff.fastweights_fused(*[a.requires_grad_(True) for a in make_inputs()], LAM, ETA, 2)
    assert not out.requires_grad
    saved = torch.ops.crnn.fastweights_fwd(*args, LAM, ETA, 2, "relu", 1e-5, True)
    B, T, H = args[0].shape
    assert saved[2].shape == (B, T, 2, H) and saved[4].shape == (B, T, 2)  # O(B*T*S*H), no H*H per step
    torch.testing.assert_close(res[0], saved[0])


def test_backward_without_saved_state_is_an_error():
    args = [a.requires_grad_(True) for a in make_inputs()]
    out = torch.ops.crnn.fastweights_fwd(*args, LAM, ETA, 1, "relu", 1e-5, False)[0]
    with pytest.raises(RuntimeError, match="save=False"):
        out.sum().backward()


@pytest.mark.parametrize("act", ["relu", "tanh"])
def test_gradcheck_float64(act):
    args = [a.requires_grad_(True) for a in make_inputs(B=2, T=3, H=4)]

    def fn(*a):
        return ff.fastweights_fused(*a, LAM, ETA, 2, act)

    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-7, rtol=1e-5)


def test_opcheck_forward_and_backward():
    args = [a.requires_grad_(True) for a in make_inputs(B=2, T=3, H=5)]
    torch.library.opcheck(torch.ops.crnn.fastweights_fwd.default,
                          (*args, LAM, ETA, 2, "tanh", 1e-5, True))
    plain = [a.detach() for a in args]
    torch.library.opcheck(torch.ops.crnn.fastweights_fwd.default,
                          (*plain, LAM, ETA, 1, "relu", 1e-5, False))
    out, _, zs, xhat, rstd = torch.ops.crnn.fastweights_fwd(*plain, LAM, ETA, 2, "relu", 1e-5, True)
    xp, h0, A0, W, gamma, beta = plain
    g_out, g_A = torch.randn_like(out), torch.randn_like(A0)
    for grads in ((g_out, g_A), (g_out, None), (None, g_A)):
        for need_dA0 in (True, False):
            torch.library.opcheck(
                torch.ops.crnn.fastweights_bwd.default,
                (*grads, h0, A0, W, gamma, out, zs, xhat, rstd, LAM, ETA, 2, "relu", need_dA0),
            )


def test_torch_compile_forward_and_backward():
    torch._dynamo.reset()
    args = make_inputs(B=2, T=4, H=6)

    def loss_fn(xp, h0, A0, W, gamma, beta):
        out, A = ff.fastweights_fused(xp, h0, A0, W, gamma, beta, LAM, ETA, 2, "relu")
        return out.pow(2).sum() + A.sum()

    compiled = torch.compile(loss_fn, backend="aot_eager", fullgraph=True)
    leaves_c = [a.clone().requires_grad_(True) for a in args]
    leaves_e = [a.clone().requires_grad_(True) for a in args]
    loss_c = compiled(*leaves_c)
    loss_e = loss_fn(*leaves_e)
    torch.testing.assert_close(loss_c, loss_e)
    for gc, ge in zip(torch.autograd.grad(loss_c, leaves_c), torch.autograd.grad(loss_e, leaves_e)):
        torch.testing.assert_close(gc, ge)


def test_meta_tensors_give_shapes():
    args = [a.to("meta") for a in make_inputs(B=2, T=3, H=5)]
    out, A, zs, xhat, rstd = torch.ops.crnn.fastweights_fwd(*args, LAM, ETA, 3, "relu", 1e-5, True)
    assert out.shape == (2, 3, 5) and A.shape == (2, 5, 5) and zs.shape == (2, 3, 3, 5)
    assert rstd.shape == (2, 3, 3)


# --- bad input -----------------------------------------------------------------------------


def fwd(args, S=1, act="relu", eps=1e-5):
    return torch.ops.crnn.fastweights_fwd(*args, LAM, ETA, S, act, eps, False)


def replaced(i, value):
    args = make_inputs(dtype=torch.float32)
    args[i] = value(args[i]) if callable(value) else value
    return args


@pytest.mark.parametrize(
    "args,match",
    [
        (replaced(0, lambda t: t.double()), "xp must be float32 or float64|same dtype"),
        (replaced(1, lambda t: t.double()), "h0 has dtype Double but xp has dtype Float"),
        (replaced(0, lambda t: t.to(torch.int64)), "float32 or float64"),
        (replaced(0, lambda t: t.half()), "float32 or float64"),
        (replaced(0, lambda t: t[0]), r"xp must be \[B, T, H\]"),
        (replaced(1, lambda t: t[:, :-1]), r"h0 must have shape \[B, H\]"),
        (replaced(2, lambda t: t[:-1]), r"A0 must have shape \[B, H, H\]"),
        (replaced(3, lambda t: t[:, :-1]), r"W must have shape \[H, H\]"),
        (replaced(4, lambda t: t[:-1]), r"gamma must have shape \[H\]"),
        (replaced(5, lambda t: torch.cat([t, t])), r"beta must have shape \[H\]"),
        (replaced(0, lambda t: t.transpose(0, 1).contiguous().transpose(0, 1)), "xp must be contiguous"),
        (replaced(2, lambda t: t.transpose(1, 2)), "A0 must be contiguous"),
        (replaced(3, lambda t: t.t()), "W must be contiguous"),
        (replaced(0, lambda t: t[:, :0]), "sequence length T must be >= 1"),
    ],
)
def test_bad_inputs_raise_clear_errors(args, match):
    with pytest.raises(RuntimeError, match=match):
        fwd(args)


def test_bad_scalars_raise_clear_errors():
    args = make_inputs(dtype=torch.float32)
    with pytest.raises(RuntimeError, match="inner_steps must be >= 1"):
        fwd(args, S=0)
    with pytest.raises(RuntimeError, match="activation must be 'relu' or 'tanh'"):
        fwd(args, act="gelu")
    with pytest.raises(RuntimeError, match="eps must be > 0"):
        fwd(args, eps=0.0)


def test_bad_backward_inputs_raise_clear_errors():
    args = make_inputs()
    out, _, zs, xhat, rstd = torch.ops.crnn.fastweights_fwd(*args, LAM, ETA, 2, "relu", 1e-5, True)
    xp, h0, A0, W, gamma, beta = args
    with pytest.raises(RuntimeError, match=r"zs must have shape \[B, T, S, H\]"):
        torch.ops.crnn.fastweights_bwd(out, None, h0, A0, W, gamma, out, zs, xhat, rstd,
                                       LAM, ETA, 3, "relu", False)
    with pytest.raises(RuntimeError, match=r"grad_out must have shape \[B, T, H\]"):
        torch.ops.crnn.fastweights_bwd(out[:, :1].contiguous(), None, h0, A0, W, gamma, out, zs, xhat,
                                       rstd, LAM, ETA, 2, "relu", False)
    with pytest.raises(RuntimeError, match="grad_out has dtype Float"):
        torch.ops.crnn.fastweights_bwd(out.float(), None, h0, A0, W, gamma, out, zs, xhat, rstd,
                                       LAM, ETA, 2, "relu", False)


def test_wrapper_accepts_non_contiguous_inputs():
    args = make_inputs()
    expected = ff.fastweights_fused(*args, LAM, ETA, 1)
    xp, h0, A0, W, gamma, beta = args
    h0_nc = h0.t().contiguous().t()
    assert not h0_nc.is_contiguous()
    got = ff.fastweights_fused(xp, h0_nc, A0.transpose(1, 2).contiguous().transpose(1, 2), W, gamma,
                               beta, LAM, ETA, 1)
    torch.testing.assert_close(got[0], expected[0])


# --- backend selection in the cell ---------------------------------------------------------


def make_cell(backend, H=8, I=5, **kw):
    from crnn_plugins.cells.fastweights import FastWeightsCell, FastWeightsOptions

    torch.manual_seed(0)
    return FastWeightsCell(I, FastWeightsOptions(hidden_size=H, backend=backend, **kw))


@pytest.mark.parametrize("S,act", [(1, "relu"), (2, "tanh")])
def test_cell_fused_matches_reference(S, act):
    fused = make_cell("fused", inner_steps=S, activation=act)
    ref = make_cell("reference", inner_steps=S, activation=act)
    assert fused.describe_backend().startswith("fused")
    x = torch.randn(4, 6, 5)
    state = {"h": torch.randn(4, 8), "A": 0.1 * torch.randn(4, 8, 8)}
    out_f, st_f = fused(x, state)
    out_r, st_r = ref(x, state)
    torch.testing.assert_close(out_f, out_r, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(st_f["A"], st_r["A"], rtol=1e-5, atol=1e-5)
    (out_f.sum() + st_f["A"].sum()).backward()
    (out_r.sum() + st_r["A"].sum()).backward()
    for (name, pf), pr in zip(fused.named_parameters(), ref.parameters()):
        torch.testing.assert_close(pf.grad, pr.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_backend_fused_is_an_error_when_unavailable(monkeypatch):
    from crnn_core import ConfigError
    from crnn_plugins.cells import fastweights

    monkeypatch.setattr(ff, "load_status", lambda: (False, "no compiler (test)"))
    with pytest.raises(ConfigError, match="no compiler"):
        make_cell("fused")


def test_backend_auto_falls_back_with_one_warning(monkeypatch):
    """The layer loads the kernel on first use, not when built; a fallback is a CrnnWarning, once per layer."""
    from crnn_core import CrnnWarning
    from crnn_plugins import FastWeights

    calls = []
    monkeypatch.setattr(ff, "load_status", lambda: calls.append(1) or (False, "no compiler (test)"))
    cells = [make_cell("auto") for _ in range(3)]
    layer = FastWeights(5, 8)
    assert calls == []  # nothing loaded (or compiled) in the constructors
    with pytest.warns(CrnnWarning, match="no compiler") as record:
        for _ in range(3):
            layer(torch.randn(2, 3, 5))
    assert len(record) == 1
    with pytest.warns(CrnnWarning):
        assert all(c.describe_backend().startswith("reference") for c in cells)


def test_functional_op_has_the_same_fallback_policy(monkeypatch):
    from crnn_core import CrnnWarning
    from crnn_core import fastweights_unroll as fastweights

    monkeypatch.setattr(ff, "load_status", lambda: (False, "no compiler (test)"))
    args = (torch.randn(2, 3, 4), torch.zeros(2, 4), torch.zeros(2, 4, 4), torch.eye(4), torch.ones(4), torch.zeros(4),
            LAM, ETA, 1)
    with pytest.warns(CrnnWarning, match="no compiler"):
        out, _ = fastweights(*args)
    torch.testing.assert_close(out, fastweights_reference(*args)[0])
    with pytest.raises(RuntimeError, match="no compiler"):
        fastweights(*args, backend="fused")


def test_device_without_fused_kernel_falls_back_or_errors():
    """A device the extension was not built for (CUDA on a CPU-only build; here 'meta')."""
    from crnn_core import ConfigError, CrnnWarning

    auto = make_cell("auto")
    assert auto._unroll_for(torch.device("cpu"))[0] is ff.fastweights_fused
    with pytest.warns(CrnnWarning, match="meta") as record:
        for _ in range(2):
            assert auto._unroll_for(torch.device("meta"))[0] is fastweights_reference
    assert len(record) == 1
    with pytest.raises(ConfigError, match="cannot run on meta"):
        make_cell("fused")._unroll_for(torch.device("meta"))


@pytest.mark.parametrize("value,normalised", [("false", "0"), ("off", "0"), ("0", "0"), ("yes", "1"), ("1", "1")])
def test_the_op_reads_crnn_no_pool_like_every_boolean_variable(monkeypatch, value, normalised):
    """The C++ op reads CRNN_NO_POOL itself (only "0" or "" meant off there); loading hands it env_flag's answer."""
    monkeypatch.setenv("CRNN_NO_POOL", value)
    assert ff._load()["ok"]
    assert os.environ["CRNN_NO_POOL"] == normalised


def test_load_status_reports_disabled_kernel(monkeypatch):
    monkeypatch.setenv("CRNN_NO_FUSED", "1")
    monkeypatch.setattr(ff, "_state", None)
    ok, reason = ff.load_status()
    assert not ok and "CRNN_NO_FUSED" in reason
    monkeypatch.undo()
    assert ff.load_status()[0]


def test_device_status_cpu_and_cuda():
    ok, reason = ff.device_status("cpu")
    assert ok, reason
    ok_cuda, reason_cuda = ff.device_status("cuda")
    if not torch.cuda.is_available():
        assert not ok_cuda and reason_cuda


# --- CUDA ----------------------------------------------------------------------------------

needs_cuda = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="no CUDA device (the CUDA kernel is compile-checked by test_nvcc.py)"
)


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
@pytest.mark.parametrize("S,act", [(1, "relu"), (3, "tanh")])
@pytest.mark.parametrize("B,T,H", [(3, 5, 7), (4, 11, 50), (2, 3, 256)])
def test_cuda_parity(dtype, rtol, S, act, B, T, H):
    if not ff.device_status("cuda")[0]:
        pytest.skip(ff.device_status("cuda")[1])
    args = make_inputs(B=B, T=T, H=H, dtype=dtype, device="cuda")
    (o_ref, A_ref, g_ref), (o, A, g) = run_both(args, S, act)
    torch.testing.assert_close(o, o_ref, rtol=rtol, atol=rtol)
    torch.testing.assert_close(A, A_ref, rtol=rtol, atol=10 * rtol)
    assert_grads_close(g_ref, g, rtol, "cuda")


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("B,T,H", [(2, 25, 128), (1, 64, 1024)])
def test_cuda_parity_large_shared_memory_paths(B, T, H):
    """float32 shapes that take the kernels' other shared-memory plans.

    (2, 25, 128): W and the history need more than the default 48 KiB, so the launch opts in
    to more shared memory; (1, 64, 1024): neither fits, so W and h_0..h_T are read from global
    memory. The truth is the float64 reference; the fused op's float32 error must be within
    4x the float32 reference's own error (or 1e-4 of the largest entry, whichever is larger).
    """
    if not ff.device_status("cuda")[0]:
        pytest.skip(ff.device_status("cuda")[1])
    args = make_inputs(B=B, T=T, H=H, dtype=torch.float64, device="cuda", a0_scale=0.05)
    (o64, A64, g64), _ = run_both(args, 1, "relu")
    args32 = [a.float() for a in args]
    (o_ref, A_ref, g_ref), (o, A, g) = run_both(args32, 1, "relu")
    names = ("out", "A_T") + tuple(f"d{n}" for n in ("xp", "h0", "A0", "W", "gamma", "beta"))
    for name, truth, ref32, got in zip(names, (o64, A64, *g64), (o_ref, A_ref, *g_ref), (o, A, *g)):
        scale = truth.abs().max().item() + 1e-12
        err_ref = (ref32.double() - truth).abs().max().item() / scale
        err = (got.double() - truth).abs().max().item() / scale
        assert err <= max(1e-4, 4 * err_ref), f"{name}: fused error {err:.2e}, reference float32 error {err_ref:.2e}"


@needs_cuda
@pytest.mark.cuda
def test_cuda_gradcheck_and_opcheck():
    if not ff.device_status("cuda")[0]:
        pytest.skip(ff.device_status("cuda")[1])
    args = [a.requires_grad_(True) for a in make_inputs(B=2, T=3, H=4, device="cuda")]
    assert torch.autograd.gradcheck(lambda *a: ff.fastweights_fused(*a, LAM, ETA, 2, "tanh"), args)
    torch.library.opcheck(torch.ops.crnn.fastweights_fwd.default, (*args, LAM, ETA, 2, "tanh", 1e-5, True))


@needs_cuda
@pytest.mark.cuda
def test_cuda_mixed_devices_are_rejected():
    if not ff.device_status("cuda")[0]:
        pytest.skip(ff.device_status("cuda")[1])
    args = make_inputs(device="cuda")
    args[3] = args[3].cpu()
    with pytest.raises(RuntimeError, match="same device"):
        fwd(args)


def test_outputs_of_successive_calls_do_not_alias():
    """Large outputs come from a block pool; a live tensor's block is never handed out again."""
    args = make_inputs(B=64, T=11, H=50, dtype=torch.float32)
    first = torch.ops.crnn.fastweights_fwd(*args, LAM, ETA, 1, "relu", 1e-5, True)
    kept = [t.clone() for t in first]
    for _ in range(3):
        again = torch.ops.crnn.fastweights_fwd(*[a * 0.5 for a in args], LAM, ETA, 1, "relu", 1e-5, True)
        assert all(a.data_ptr() != b.data_ptr() for a in first for b in again if a.numel() and b.numel())
        del again
    for t, k in zip(first, kept):
        torch.testing.assert_close(t, k, rtol=0, atol=0)


def test_the_fallback_warning_points_at_the_callers_line(monkeypatch):
    """Through nn.Module.__call__, ContextualRNN or the functional op, the CrnnWarning names this file, not crnn's."""
    from crnn_core import ContextualRNN, CrnnWarning
    from crnn_core import fastweights_unroll as fastweights
    from crnn_plugins import FastWeights

    monkeypatch.setattr(ff, "load_status", lambda: (False, "no compiler (test)"))
    layer = FastWeights(5, 8)
    with pytest.warns(CrnnWarning, match="no compiler") as record:
        layer(torch.randn(2, 3, 5)); line = sys._getframe().f_lineno  # noqa: E702 - the line the warning must name
    assert (record[0].filename, record[0].lineno) == (__file__, line)
    rnn = ContextualRNN(FastWeights(5, 8), init="zero")
    with pytest.warns(CrnnWarning, match="no compiler") as record:
        rnn(torch.randn(2, 3, 5))
    assert record[0].filename == __file__
    args = (torch.randn(2, 3, 4), torch.zeros(2, 4), torch.zeros(2, 4, 4), torch.eye(4), torch.ones(4), torch.zeros(4),
            LAM, ETA, 1)
    with pytest.warns(CrnnWarning, match="no compiler") as record:
        fastweights(*args)
    assert record[0].filename == __file__


@pytest.mark.parametrize("unroll", [fastweights_reference, fastweights_naive, ff.fastweights_fused],
                         ids=["reference", "naive", "fused"])
def test_A0_none_is_zero_fast_weights_and_final_state_false_skips_A_T(unroll):
    """Two conventions every backend shares: ``A0=None`` is A_0 = 0 (never materialised), and
    ``final_state=False`` returns ``(outputs, None)``; outputs and gradients are unchanged."""
    xp, h0, A0, W, gamma, beta = make_inputs(B=3, T=6, H=9, a0_scale=0.0)
    leaves = [t.detach().clone().requires_grad_(True) for t in (xp, h0, W, gamma, beta)]
    out_z, A_z = unroll(leaves[0], leaves[1], A0, *leaves[2:], LAM, ETA, 2, "tanh")
    grads_z = torch.autograd.grad(out_z.pow(2).sum(), leaves)
    for final_state in (True, False):
        leaves_n = [t.detach().clone().requires_grad_(True) for t in leaves]
        out_n, A_n = unroll(leaves_n[0], leaves_n[1], None, *leaves_n[2:], LAM, ETA, 2, "tanh", final_state=final_state)
        torch.testing.assert_close(out_n, out_z, rtol=1e-12, atol=1e-12)
        if final_state:
            torch.testing.assert_close(A_n, A_z, rtol=1e-12, atol=1e-12)
        else:
            assert A_n is None
        for name, g_n, g_z in zip(("xp", "h0", "W", "gamma", "beta"), torch.autograd.grad(out_n.pow(2).sum(), leaves_n),
                                  grads_z):
            torch.testing.assert_close(g_n, g_z, rtol=1e-10, atol=1e-12, msg=lambda m, n=name: f"d{n}: {m}")


def test_the_op_takes_an_empty_A0_and_no_A_T():
    """The op's own conventions behind those arguments: an empty ``A0`` and ``final_state=False``."""
    xp, h0, A0, W, gamma, beta = make_inputs(B=2, T=4, H=5, a0_scale=0.0)
    full = torch.ops.crnn.fastweights_fwd(xp, h0, A0, W, gamma, beta, LAM, ETA, 2, "relu", 1e-5, True)
    empty = torch.ops.crnn.fastweights_fwd(xp, h0, xp.new_empty(0), W, gamma, beta, LAM, ETA, 2, "relu", 1e-5, True,
                                           "previous", False)
    assert empty[1].shape == (0,), "no A_T"
    for a, b in zip(full[:1] + full[2:], empty[:1] + empty[2:]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    g = torch.randn_like(full[0])
    back_full = torch.ops.crnn.fastweights_bwd(g, None, h0, A0, W, gamma, *full[:1], *full[2:], LAM, ETA, 2, "relu",
                                               False)
    back_empty = torch.ops.crnn.fastweights_bwd(g, None, h0, xp.new_empty(0), W, gamma, *empty[:1], *empty[2:], LAM,
                                                ETA, 2, "relu", False)
    for a, b in zip(back_full, back_empty):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    with pytest.raises(RuntimeError, match=r"A0 must have shape \[B, H, H\] = \[2, 5, 5\], \[H, H\] = \[5, 5\] "
                                           r"\(shared by the batch\) or be empty"):
        torch.ops.crnn.fastweights_fwd(xp, h0, xp.new_empty(3), W, gamma, beta, LAM, ETA, 1, "relu", 1e-5, False)
    torch.library.opcheck(torch.ops.crnn.fastweights_fwd.default,
                          (xp, h0, xp.new_empty(0), W, gamma, beta, LAM, ETA, 2, "relu", 1e-5, True, "previous", False))
    shared = A0[0].clone().requires_grad_(True)  # one [H, H] A0 for the batch: its gradient is [H, H]
    torch.library.opcheck(torch.ops.crnn.fastweights_fwd.default,
                          (xp, h0, shared, W, gamma, beta, LAM, ETA, 2, "relu", 1e-5, True, "previous", True))


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_the_kernels_batch_sums_match_the_reference_for_any_split(threads):
    """dW, dgamma and dbeta are summed per range of examples in the kernel (csrc RangeSums), in a
    fixed order: right for every split of the batch over threads, and the same on every call."""
    args = make_inputs(B=7, T=5, H=20, dtype=torch.float32, a0_scale=0.0)
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        (_, _, g_ref), (_, _, g) = run_both(args, 1, "relu")
        (_, _, g_again) = run_both(args, 1, "relu")[1]
    finally:
        torch.set_num_threads(before)
    assert_grads_close(g_ref, g, 1e-5, f"{threads} threads")
    for a, b in zip(g, g_again):
        assert torch.equal(a, b), "the same call twice gives the same bits"


@pytest.mark.usefixtures("each_cpu_path")
@pytest.mark.parametrize("B", [16, 21], ids=["whole-groups", "a-partial-group"])
@pytest.mark.parametrize("S,act,a_update,dtype", [
    (1, "relu", "previous", torch.float32),
    (2, "relu", "preliminary", torch.float32),
    (3, "tanh", "preliminary", torch.float64),
    (2, "tanh", "previous", torch.float64),
])
@pytest.mark.parametrize("a0", ["none", "per-example", "shared"])
def test_the_training_step_with_the_batch_in_lanes_matches_the_reference(B, S, act, a_update, dtype, a0):
    """``final_state=False`` with B >= one vector of examples, and ``A0=None``, a per-example
    ``A0`` (the learned init) or one ``[H, H]`` ``A0`` shared by the batch (the free init) with
    its gradient, runs the forward and the backward with the batch in the vector lanes (csrc
    forward_lanes / backward_lanes, on every CPU path: 4, 8 or 16 examples per vector); outputs
    and gradients match the reference (given the shared ``A0`` tiled over the batch)."""
    xp, h0, A0, W, gamma, beta = make_inputs(B=B, T=11, H=20, dtype=dtype)
    A0 = A0[0] if a0 == "shared" else A0
    rtol = 1e-10 if dtype == torch.float64 else 1e-4
    names = ("xp", "h0", "W", "gamma", "beta") if a0 == "none" else ("xp", "h0", "A0", "W", "gamma", "beta")
    results = []
    for unroll in (fastweights_reference, ff.fastweights_fused):
        leaves = [t.detach().clone().requires_grad_(True) for t in ((xp, h0) if a0 == "none" else (xp, h0, A0))]
        params = [t.detach().clone().requires_grad_(True) for t in (W, gamma, beta)]
        A0_arg = None if a0 == "none" else leaves[2]
        if a0 == "shared" and unroll is fastweights_reference:
            A0_arg = A0_arg.expand(B, *A0.shape)
        out, A = unroll(leaves[0], leaves[1], A0_arg, *params, LAM, ETA, S, act, 1e-5, a_update,
                        final_state=False)
        assert A is None
        upstream = torch.linspace(-1, 1, out.numel(), dtype=dtype).reshape(out.shape)
        results.append((out.detach(), torch.autograd.grad((out * upstream).sum(), leaves + params)))
    (o_ref, g_ref), (o, g) = results
    torch.testing.assert_close(o, o_ref, rtol=rtol, atol=rtol)
    for name, a, b in zip(names, g_ref, g):
        err = (a - b).abs().max().item() / (a.abs().max().item() + 1e-12)
        assert err <= rtol, f"d{name}: relative error {err:.2e}"


@pytest.mark.usefixtures("each_cpu_path")
@pytest.mark.parametrize("B", [3, 21], ids=["per-example", "lanes-and-a-partial-group"])
@pytest.mark.parametrize("final_state", [True, False])
def test_a_shared_A0_matches_it_tiled_over_the_batch(B, final_state):
    """An ``[H, H]`` ``A0`` is one matrix for every example: outputs, ``A_T`` and every gradient
    (``dA0`` the batch sum, ``A_T`` in the loss when returned) equal the reference given the
    matrix tiled to ``[B, H, H]``, on the per-example and the batch-in-lanes paths."""
    check_shared_A0(B, final_state, "cpu")


@needs_cuda
@pytest.mark.cuda
@pytest.mark.parametrize("final_state", [True, False])
def test_cuda_shared_A0_matches_it_tiled_over_the_batch(final_state):
    """The CUDA glue tiles an ``[H, H]`` ``A0`` for the kernels and sums its gradient."""
    if not ff.device_status("cuda")[0]:
        pytest.skip(ff.device_status("cuda")[1])
    check_shared_A0(21, final_state, "cuda")


def check_shared_A0(B, final_state, device):
    """The fused op with one ``[H, H]`` ``A0`` against the reference with it tiled (float64)."""
    xp, h0, A0, W, gamma, beta = make_inputs(B=B, T=6, H=13, device=device)
    shared = A0[0]
    results = []
    for unroll in (fastweights_reference, ff.fastweights_fused):
        leaves = [t.detach().clone().requires_grad_(True) for t in (xp, h0, shared, W, gamma, beta)]
        A0_arg = leaves[2].expand(B, 13, 13) if unroll is fastweights_reference else leaves[2]
        out, A = unroll(leaves[0], leaves[1], A0_arg, *leaves[3:], LAM, ETA, 2, "tanh", final_state=final_state)
        loss = (out * torch.linspace(-1, 1, out.numel(), dtype=out.dtype).reshape(out.shape)).sum()
        if final_state:
            loss = loss + (A * A).sum()
        results.append(([out.detach()] + ([A.detach()] if final_state else []), torch.autograd.grad(loss, leaves)))
    (o_ref, g_ref), (o, g) = results
    for a, b in zip(o_ref, o):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
    assert g[2].shape == shared.shape
    for name, a, b in zip(("xp", "h0", "A0", "W", "gamma", "beta"), g_ref, g):
        err = (a - b).abs().max().item() / (a.abs().max().item() + 1e-12)
        assert err <= 1e-10, f"d{name}: relative error {err:.2e}"


def test_fastweights_unroll_takes_a_shared_A0_on_every_backend():
    """The public ``fastweights_unroll`` takes an ``[H, H]`` ``A0`` on the reference backend too
    (tiled there), with the same outputs and the same ``[H, H]`` gradient as the fused op."""
    from crnn_core import fastweights_unroll

    xp, h0, A0, W, gamma, beta = make_inputs(B=4, T=5, H=7)
    results = {}
    for backend in ("reference", "fused"):
        shared = A0[0].clone().requires_grad_(True)
        out, A = fastweights_unroll(xp, h0, shared, W, gamma, beta, LAM, ETA, 1, backend=backend)
        (grad,) = torch.autograd.grad(out.sum() + A.sum(), [shared])
        results[backend] = (out.detach(), A.detach(), grad)
    assert results["fused"][2].shape == (7, 7)
    for a, b in zip(results["reference"], results["fused"]):
        torch.testing.assert_close(b, a, rtol=1e-10, atol=1e-10)
