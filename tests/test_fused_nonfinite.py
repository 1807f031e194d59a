"""NaN and inf through the fused fast-weights op: the same non-finite pattern as the reference.

A NaN or inf in an input must reach exactly the outputs, final state and gradients it reaches
in the reference backend (``fastweights_reference`` under autograd): the ``isnan`` and
``isinf`` masks of every result are compared, not the values. Each case poisons one input
(x at the first, a middle and the last step, several examples at once, h_0, A_0, a weight)
and runs on every compiled CPU path, in float32 and float64, for both ``a_update`` values and
one and two inner steps, through the three kernel routes: per example (A_T wanted), the batch
in the vector lanes (a full group, no A_T) and the chunked long-sequence form (T > the chunk
length 64). The CUDA kernels are checked the same way through their CPU emulation in
tests/test_cuda_emulation.py.
"""

from __future__ import annotations

import pytest
import torch

from crnn_plugins.fast_weights import fused as ff
from crnn_plugins.fast_weights.reference import fastweights_reference

from .test_fused_op import each_cpu_path  # noqa: F401  (fixture)

LAM, ETA = 0.95, 0.5
H = 6
ROUTES = {  # route: (B, T, final_state)
    "example": (4, 5, True),
    "lanes": (16, 5, False),  # one whole group of examples in the lanes (16 float or 8 double lanes)
    "chunked": (3, 70, True),  # T above the chunk length max(64, 2H)
}

pytestmark = pytest.mark.usefixtures("fused_kernel")


def clean_inputs(B: int, T: int, dtype: torch.dtype, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)

    return {"xp": r(B, T, H), "h0": r(B, H), "A0": 0.2 * r(B, H, H),
            "W": 0.05 * torch.eye(H, dtype=dtype) + 0.5 * r(H, H) / H**0.5,
            "gamma": 1 + 0.1 * r(H), "beta": 0.1 * r(H)}


def poisons(B: int, T: int) -> list[tuple[str, str, tuple]]:
    """(label, input name, index) of the entries set to NaN or inf, one case each."""
    return [
        ("x first step", "xp", (0, 0, 2)),
        ("x middle", "xp", (1, 2, 3)),
        ("x last step", "xp", (B - 1, T - 1, 0)),
        ("x several examples", "xp", ([0, 2], [1, T - 2], [4, 1])),
        ("h0", "h0", (1, 4)),
        ("A0", "A0", (2, 1, 5)),
        ("W", "W", (3, 1)),
        ("gamma", "gamma", (2,)),
    ]


def poisoned(B: int, T: int, dtype: torch.dtype, name: str, index: tuple, bad: float) -> dict[str, torch.Tensor]:
    """clean_inputs with inputs[name][index] = bad. For W, h_0 of example 0 is zero in the
    poisoned column: the reference's 0 * inf (or 0 * NaN) there is NaN, which a product that
    skipped the zeros of h would miss."""
    inputs = clean_inputs(B, T, dtype)
    inputs[name][index] = bad
    if name == "W":
        inputs["h0"][0, index[1]] = 0.0
    return inputs


GRAD_NAMES = {"xp": "dxp", "h0": "dh0", "A0": "dA0", "W": "dW", "gamma": "dgamma", "beta": "dbeta"}


def run_backend(fn, inputs, gout, gAT, S: int, a_update: str, final_state: bool = True) -> dict[str, torch.Tensor]:
    """Outputs, A_T and every input gradient of the loss sum(out * gout) + sum(A_T * gAT)."""
    leaves = {k: v.clone().requires_grad_(True) for k, v in inputs.items()}
    out, A_T = fn(*leaves.values(), LAM, ETA, S, "relu", 1e-5, a_update, final_state=final_state)
    loss = (out * gout).sum() + ((A_T * gAT).sum() if A_T is not None else 0)
    loss.backward()
    results = {"out": out.detach(), **({"A_T": A_T.detach()} if A_T is not None else {})}
    results.update({GRAD_NAMES[k]: v.grad for k, v in leaves.items()})
    return results


def masks(results: dict[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {k: (torch.isnan(v), torch.isinf(v)) for k, v in results.items()}


def reference_patterns(inputs, gout, gAT, S: int, a_update: str, final_state: bool = True):
    """The (isnan, isinf) masks of every result under the reference backend."""
    return masks(run_backend(fastweights_reference, inputs, gout, gAT, S, a_update, final_state))


def upstream(B: int, T: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return torch.randn(B, T, H, generator=g, dtype=dtype), torch.randn(B, H, H, generator=g, dtype=dtype)


def assert_same_patterns(inputs, S, a_update, final_state, what):
    B, T, _ = inputs["xp"].shape
    gout, gAT = upstream(B, T, inputs["xp"].dtype)
    want = reference_patterns(inputs, gout, gAT, S, a_update, final_state)
    got = masks(run_backend(ff.fastweights_fused, inputs, gout, gAT, S, a_update, final_state))
    assert want["out"][0].any(), f"{what}: the case poisons nothing"
    for name, (nan, inf) in want.items():
        for kind, w, g in (("NaN", nan, got[name][0]), ("inf", inf, got[name][1])):
            diff = (w != g).nonzero()
            assert diff.numel() == 0, (f"{what}: {kind} in {name} differs from the reference at {diff[:4].tolist()} "
                                       f"({int(w.sum())} in the reference, {int(g.sum())} fused)")


@pytest.mark.parametrize("route", list(ROUTES))
@pytest.mark.parametrize("S", [1, 2])
@pytest.mark.parametrize("a_update", ["previous", "preliminary"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_nonfinite_pattern_matches_the_reference(each_cpu_path, route, S, a_update, dtype):
    B, T, final_state = ROUTES[route]
    for label, name, index in poisons(B, T):
        for bad in (float("nan"), float("inf")):
            inputs = poisoned(B, T, dtype, name, index, bad)
            assert_same_patterns(inputs, S, a_update, final_state, f"{route}, {label} = {bad}")


def test_relu_keeps_a_nan_input_nan():
    """The reproducer: one NaN feature gives NaN outputs from its step on, as in the reference."""
    from crnn_core import FastWeights

    torch.manual_seed(0)
    layer = FastWeights(6, 16)
    x = torch.randn(4, 5, 6)
    x[1, 2, 3] = float("nan")
    out = layer(x)[0]
    assert torch.isnan(out[1, 2:]).all() and not torch.isnan(out[1, :2]).any()
    assert not torch.isnan(out[[0, 2, 3]]).any()
