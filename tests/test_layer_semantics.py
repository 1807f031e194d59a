"""What ``FastWeights`` and ``ContextualRNN`` promise beyond one forward pass.

* double backward through the fused op (``create_graph=True``) is correct: ``gradgradcheck``
  in float64 and a Hessian-vector product equal to the reference's, while first-order
  gradients still come from the kernel's backward;
* the ops are registered when the layer is imported (no forward needed), ``torch.compile``
  with ``fullgraph=True`` works on the first call, and a saved ``torch.export`` program loads
  and runs in a fresh process after ``import crnn_core``;
* a layer moved to bfloat16 / float16 runs forward and backward, close to its float32 self;
* hyperparameters set after construction are validated as the constructor validates them and
  take effect (a new ``backend`` is chosen again);
* ``ContextualRNN``: ``context=`` / ``sample=`` with ``state=`` and ``sample=True`` without a
  distribution are errors.
"""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn

from crnn_core import ContextualRNN
from crnn_plugins.fast_weights import fused as ff
from crnn_plugins.fast_weights.layer import HYPERPARAMETERS, FastWeights
from crnn_plugins.fast_weights.reference import fastweights_reference

REPO = Path(__file__).resolve().parents[1]
LAM, ETA = 0.9, 0.5


def op_inputs(B=2, T=3, H=4, A0="batch", seed=0, dtype=torch.float64):
    """Leaves (xp, h0, A0, W, gamma, beta) that require grad; ``A0``: "batch" [B,H,H], "shared" [H,H] or "none"."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    xp, h0 = r(B, T, H), r(B, H)
    a0 = {"batch": 0.1 * r(B, H, H), "shared": 0.1 * r(H, H), "none": None}[A0]
    W = 0.05 * torch.eye(H, dtype=dtype) + 0.3 * r(H, H)
    gamma, beta = 1 + 0.1 * r(H), 0.1 * r(H)
    return [None if t is None else t.requires_grad_(True) for t in (xp, h0, a0, W, gamma, beta)]


# ---------------------------------------------------------------------------------------
# Double backward


@pytest.mark.usefixtures("fused_kernel")
@pytest.mark.parametrize("A0,activation,a_update,final_state", [
    ("batch", "tanh", "previous", True),
    ("shared", "relu", "preliminary", True),
    ("none", "tanh", "preliminary", False),
])
def test_fused_double_backward_passes_gradgradcheck(A0, activation, a_update, final_state):
    leaves = op_inputs(A0=A0)
    idx = [i for i, t in enumerate(leaves) if t is not None]

    def unroll(*ts):
        args = list(leaves)
        for i, t in zip(idx, ts):
            args[i] = t
        out, A = ff.fastweights_fused(*args, LAM, ETA, 2, activation, 1e-5, a_update, final_state=final_state)
        return (out, A) if final_state else out

    # fast_mode: the check along random directions (the full Jacobian of a Jacobian takes minutes)
    assert torch.autograd.gradgradcheck(unroll, [leaves[i] for i in idx], fast_mode=True)


@pytest.mark.usefixtures("fused_kernel")
def test_fused_hessian_vector_product_equals_the_reference():
    """grad, then grad of (grad . v): the fused op and the reference agree, and it is not zero."""
    results = []
    for unroll in (ff.fastweights_fused, fastweights_reference):
        leaves = op_inputs()
        out, A = unroll(*leaves, LAM, ETA, 2, "tanh")
        loss = (out ** 2).sum() + (A ** 2).sum()
        grads = torch.autograd.grad(loss, leaves, create_graph=True)
        vs = op_inputs(seed=1)
        hvp = torch.autograd.grad(sum((g * v.detach()).sum() for g, v in zip(grads, vs)), leaves)
        results.append(hvp)
    for fused, ref in zip(*results):
        assert fused.abs().max() > 1e-3, "a Hessian-vector product of zero"
        torch.testing.assert_close(fused, ref, rtol=1e-9, atol=1e-10)


@pytest.mark.usefixtures("fused_kernel")
def test_first_order_gradients_come_from_the_kernel(monkeypatch):
    """Without create_graph the kernel's own backward runs (the reference recomputation is never called)."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("the reference recomputation ran for a first-order backward")

    monkeypatch.setattr(ff, "_backward_by_reference", refuse)
    leaves = op_inputs()
    out, A = ff.fastweights_fused(*leaves, LAM, ETA, 2, "tanh")
    grads = torch.autograd.grad(out.sum() + A.sum(), leaves)
    ref_leaves = [t.detach().requires_grad_(True) for t in leaves]
    out_r, A_r = fastweights_reference(*ref_leaves, LAM, ETA, 2, "tanh")
    for g, r in zip(grads, torch.autograd.grad(out_r.sum() + A_r.sum(), ref_leaves)):
        torch.testing.assert_close(g, r)


@pytest.mark.usefixtures("fused_kernel")
def test_layer_gradient_penalty_trains_like_the_reference():
    """A gradient penalty (create_graph=True, then backward) gives the same parameter gradients on both backends."""
    torch.manual_seed(0)
    fused = FastWeights(3, 5, backend="fused").double()
    ref = FastWeights(3, 5, backend="reference").double()
    ref.load_state_dict(fused.state_dict())
    x = torch.randn(2, 4, 3, dtype=torch.float64, requires_grad=True)
    got = []
    for layer in (fused, ref):
        out, state = layer(x)
        (gx,) = torch.autograd.grad(out.sum() + state["A"].sum(), x, create_graph=True)
        penalty = (gx ** 2).sum()
        got.append(torch.autograd.grad(penalty, list(layer.parameters())))
    for a, b in zip(*got):
        assert b.abs().max() > 0
        torch.testing.assert_close(a, b)


# ---------------------------------------------------------------------------------------
# Registration at import, torch.compile, torch.export


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code).strip()], cwd=REPO, capture_output=True,
                          text=True, timeout=300)


@pytest.mark.usefixtures("fused_kernel")
def test_importing_the_layer_registers_the_ops():
    result = run_python("""
        import torch
        import crnn_plugins.fast_weights.layer
        from crnn_plugins.fast_weights import fused as ff
        assert ff._state is not None and ff._state["ok"], ff._state
        assert torch._C._dispatch_has_kernel_for_dispatch_key("crnn::fastweights_fwd", "CPU")
        assert type(torch.ops.crnn) is torch._ops._OpNamespace, type(torch.ops.crnn)
        print("registered")
    """)
    assert result.returncode == 0 and "registered" in result.stdout, result.stderr[-2000:]


@pytest.mark.usefixtures("fused_kernel")
@pytest.mark.parametrize("imports", [
    'import crnn_core\nassert "torch" not in sys.modules, "import crnn_core imported torch"\nimport torch',
    "import torch\nimport crnn_core",
], ids=["crnn_core-first", "torch-first"])
def test_exported_program_loads_in_a_fresh_process_after_import_crnn_core(tmp_path, imports):
    torch.manual_seed(0)
    layer = FastWeights(3, 4, backend="fused").eval()
    x = torch.randn(2, 5, 3)
    program = torch.export.export(layer, (x,))
    assert "crnn.fastweights_fwd" in program.graph_module.code
    torch.export.save(program, tmp_path / "fw.pt2")
    out, state = layer(x)
    torch.save({"x": x, "out": out.detach(), "A": state["A"].detach()}, tmp_path / "expected.pt")
    result = run_python("import sys\n" + imports + textwrap.dedent(f"""
        assert "crnn_plugins.fast_weights.layer" not in sys.modules
        program = torch.export.load({str(tmp_path / 'fw.pt2')!r})
        expected = torch.load({str(tmp_path / 'expected.pt')!r})
        out, state = program.module()(expected["x"])
        torch.testing.assert_close(out, expected["out"])
        torch.testing.assert_close(state["A"], expected["A"])
        print("loaded and ran")
    """))
    assert result.returncode == 0 and "loaded and ran" in result.stdout, result.stderr[-2000:]


@pytest.mark.usefixtures("fused_kernel")
@pytest.mark.parametrize("compiler", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
def test_compile_fullgraph_first_call_forward_and_backward_match_eager(compiler):
    """aot_eager traces what inductor does (Dynamo, the fake op, the joint graph), in seconds; inductor ~1 min."""
    torch.manual_seed(0)
    layer = FastWeights(3, 4, backend="fused")
    x = torch.randn(2, 3, 3)
    compiled = torch.compile(layer, fullgraph=True, backend=compiler)
    results = []
    for model in (compiled, layer):
        out, state = model(x)
        grads = torch.autograd.grad(out.sum() + (state["A"] ** 2).sum(), list(layer.parameters()))
        results.append((out, state["A"], *grads))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)


@pytest.mark.usefixtures("fused_kernel")
def test_compile_fullgraph_with_lengths_first_call_forward_and_backward_match_eager():
    """lengths' range is checked inside the graph (no value read into Python), so fullgraph
    holds; a value out of range is still refused, naming lengths."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    layer = FastWeights(3, 4, backend="fused")
    x, lengths = torch.randn(3, 5, 3), torch.tensor([5, 2, 4])
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    results = []
    for model in (compiled, layer):
        out, state = model(x, lengths=lengths)
        loss = out.sum() + (state["A"] ** 2).sum() + state["h"].sum()
        results.append((out, state["h"], state["A"], *torch.autograd.grad(loss, list(layer.parameters()))))
    for a, b in zip(*results):
        torch.testing.assert_close(a, b)
    assert results[0][0][1, 2:].abs().sum() == 0, "outputs after an example's end are zero"
    with pytest.raises(RuntimeError, match=r"lengths must be in \[1, 5\]"):
        compiled(x, lengths=torch.tensor([5, 0, 4]))


@pytest.mark.usefixtures("fused_kernel")
def test_compile_fullgraph_when_the_kernel_loads_on_first_use(monkeypatch):
    """A kernel not loaded at import (a JIT build left to the first use) loads inside the first
    compiled call without breaking the graph: torch.compile takes load_status() as a constant."""
    torch._dynamo.reset()  # no compiled code from another test: this call traces the layer
    monkeypatch.setattr(ff, "_state", None)
    layer = FastWeights(3, 4, backend="fused")
    x = torch.randn(2, 3, 3)
    out, _ = torch.compile(layer, fullgraph=True, backend="aot_eager")(x)
    assert ff._state is not None and ff._state["ok"]
    torch.testing.assert_close(out, layer(x)[0])


# ---------------------------------------------------------------------------------------
# Low precision


@pytest.mark.parametrize("backend", ["fused", "reference"])
@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 5e-2), (torch.float16, 1e-2)])
def test_a_low_precision_layer_runs_close_to_float32(backend, dtype, tol):
    if backend == "fused" and not ff.load_status()[0]:
        pytest.skip("the fused kernel is not available")
    torch.manual_seed(0)
    layer32 = FastWeights(6, 16, backend=backend)
    low = FastWeights(6, 16, backend=backend)
    low.load_state_dict(layer32.state_dict())
    low.to(dtype)
    x = torch.randn(4, 5, 6)
    results = []
    for layer, inp in ((layer32, x), (low, x.to(dtype))):
        out, state = layer(inp)
        assert out.dtype == state["A"].dtype == inp.dtype
        (out.float().sum() + state["A"].float().sum()).backward()
        results.append((out, state["A"], *(p.grad for p in layer.parameters())))
    for ref, got in zip(*results):
        assert got.dtype == dtype
        assert (got.float() - ref).abs().max() <= tol * ref.abs().max()


# ---------------------------------------------------------------------------------------
# Hyperparameters set after construction

INVALID = {"lam": [7.0, -0.1, float("nan"), "0.5", True], "eta": [-1.0, float("inf"), None],
           "inner_steps": [0, 1.5, True], "activation": ["gelu", None], "backend": ["cuda", ""],
           "a_update": ["next", 1]}
VALID = {"lam": 0.5, "eta": 1.25, "inner_steps": 3, "activation": "tanh", "backend": "reference",
         "a_update": "preliminary"}


def test_every_settable_hyperparameter_is_tested():
    assert set(INVALID) == set(VALID) == set(HYPERPARAMETERS)


@pytest.mark.parametrize("name", sorted(INVALID))
def test_an_invalid_value_set_later_is_refused_as_in_the_constructor(name):
    layer = FastWeights(3, 4)
    for value in INVALID[name]:
        with pytest.raises(ValueError, match=f"FastWeights: {name} ") as later:
            setattr(layer, name, value)
        with pytest.raises(ValueError) as built:
            FastWeights(3, 4, **{name: value})
        assert str(later.value) == str(built.value)
    assert getattr(layer, name) == getattr(FastWeights(3, 4), name), "a refused value was kept"


@pytest.mark.parametrize("name", sorted(VALID))
def test_a_value_set_later_takes_effect(name):
    torch.manual_seed(0)
    backend = "auto" if name == "backend" else "reference"
    layer = FastWeights(3, 4, backend=backend)
    x = torch.randn(2, 5, 3)
    before = layer(x)[0]  # the first forward also chooses (and caches) the backend
    setattr(layer, name, VALID[name])
    built = FastWeights(3, 4, **{"backend": backend, name: VALID[name]})
    built.load_state_dict(layer.state_dict())
    assert getattr(layer, name) == VALID[name] and f"{name}={VALID[name]!r}" in repr(layer)
    after = layer(x)[0]
    torch.testing.assert_close(after, built(x)[0])
    if name == "backend":
        assert layer.backend_for(x.device) == "reference (asked for)"
    else:
        assert not torch.allclose(after, before), f"setting {name} changed nothing"


@pytest.mark.usefixtures("fused_kernel")
def test_setting_backend_after_a_forward_chooses_it_again(monkeypatch):
    layer = FastWeights(3, 4)
    x = torch.randn(2, 3, 3)
    layer(x)
    assert layer.backend_for(x.device).startswith("fused")
    layer.backend = "reference"
    assert layer.backend_for(x.device).startswith("reference")
    calls = []
    monkeypatch.setattr(ff, "fastweights_fused", lambda *a, **k: calls.append(1))
    layer(x)
    assert not calls, "the fused op ran after backend='reference' was set"


def test_a_layer_pickled_with_plain_attributes_still_loads():
    layer = FastWeights(3, 4, lam=0.8)
    state = dict(layer.__dict__)
    for name in HYPERPARAMETERS:  # what a layer pickled before the properties carried
        state[name] = state.pop("_" + name)
    restored = FastWeights.__new__(FastWeights)
    restored.__setstate__(state)
    assert restored.lam == 0.8 and restored.backend == "auto"
    restored(torch.randn(1, 2, 3))
    assert pickle.loads(pickle.dumps(layer)).lam == 0.8


# ---------------------------------------------------------------------------------------
# ContextualRNN


def test_context_or_sample_with_a_state_is_an_error():
    rnn = ContextualRNN(nn.GRU(3, 4, batch_first=True), init="learned", context_size=2)
    x, context = torch.randn(2, 5, 3), torch.randn(2, 2)
    _, state = rnn(x, context)
    with pytest.raises(ValueError, match="context= .*state="):
        rnn(x, context, state=state)
    with pytest.raises(ValueError, match="sample= .*state="):
        rnn(x, state=state, sample=False)
    rnn(x, state=state)  # continuing from a state alone is fine


@pytest.mark.parametrize("init,options", [("learned", None), ("zero", None)])
def test_sample_true_without_a_distribution_is_an_error(init, options):
    rnn = ContextualRNN(nn.GRU(3, 4, batch_first=True), init=init, context_size=2, init_options=options)
    x, context = torch.randn(2, 5, 3), torch.randn(2, 2)
    with pytest.raises(ValueError, match=f"sample=True, but init '{init}' has no distribution"):
        rnn(x, context, sample=True)
    rnn(x, context, sample=False)  # the mean: fine


def test_sample_true_with_a_normal_learned_init_draws():
    rnn = ContextualRNN(nn.GRU(3, 4, batch_first=True), init="learned", context_size=2,
                        init_options={"distribution": "normal"})
    context = torch.randn(2, 2)
    a, b = (rnn.initial_state(2, context, sample=True)["h"] for _ in range(2))
    assert not torch.equal(a, b)
