"""The training step's speed options (crnn_core/step.py): same results as the old path, and resumable.

The old path is PyTorch's per-parameter Adam (``train.adam_impl=for-loop``), eager, float32,
the cell projecting the task's B x T embeddings itself (``TaskModel.project_in_task = False``):
what ``fit`` ran before these options existed. The new default projects ART's embedding
table once and looks the rows up (``TaskModule.encode_projected``). Each check trains 64 ART steps of 128 with
the fused backend and compares the per-step training losses:

* the default step (projected table, fused Adam, one NaN check) and ``adam_impl`` fused /
  foreach vs the old path: equal to 1e-6 (float rounding of the update and of the sums);
* ``compile=true`` vs eager: equal to 1e-6 (inductor fuses the elementwise ops of the
  encoder, head and loss; the fused op is the same call);
* ``precision=bf16-mixed`` vs ``32`` (absolute, on losses of ~3.65 falling to ~2.3; bfloat16
  keeps 8 bits of mantissa in the projections and the head): the first step's loss within
  2e-3 (same weights, rounding only; measured 2.5e-4), every step within 6e-2 (the
  trajectories drift apart; measured 3.5e-2), the mean of the last 16 steps within 1e-2
  (measured 8e-4); and the fused op really runs (no fallback to the reference under autocast).
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from crnn_core import ConfigError
from crnn_core.layers.model import ModelSpec, build_model
from crnn_core.plugin_manager.manager import get_plugins
from crnn_core.rundirs.run import RunConfig, checkpoint_identity, identity_matches
from crnn_core.training.step import grads_finite
from crnn_core.training.train import Callback, TrainConfig, fit

pytestmark = pytest.mark.usefixtures("fused_kernel")  # skip or fail as the kernel loads (conftest)

STEPS = 64


class StepLosses(Callback):
    """Records each step's training loss (from the state's running sum)."""

    def __init__(self) -> None:
        self.losses: list[float] = []
        self._sum = 0.0

    def on_step_end(self, loop) -> None:
        s = loop.state
        self.losses.append((s.epoch_loss - self._sum) / loop.config.batch_size)
        self._sum = s.epoch_loss


def step_losses(init: str = "zero", project_in_task: bool = True, **train: object) -> list[float]:
    spec = ModelSpec(cell="fastweights", init=init, task="art", cell_options={"backend": "fused"},
                     task_options={"train_size": STEPS * 128, "val_size": 64})
    torch.manual_seed(0)
    built = build_model(spec, get_plugins())
    built.model.project_in_task = project_in_task
    record = StepLosses()
    fit(built.model, built.task, TrainConfig(epochs=1, batch_size=128, threads=1, **train), callbacks=[record])
    assert len(record.losses) == STEPS
    return record.losses


@pytest.fixture(scope="module")
def old_losses() -> dict[str, list[float]]:
    return {init: step_losses(init, project_in_task=False, adam_impl="for-loop") for init in ("zero", "learned")}


@pytest.mark.parametrize("impl", ["auto", "fused", "foreach"])
def test_adam_impls_match_the_for_loop(old_losses, impl):
    new = step_losses("zero", adam_impl=impl)
    assert max(abs(a - b) for a, b in zip(new, old_losses["zero"])) <= 1e-6
    assert old_losses["zero"][-1] < old_losses["zero"][0] - 0.3, "the 64 steps learn something"


def test_default_step_matches_the_old_path_learned_init(old_losses):
    new = step_losses("learned")
    assert max(abs(a - b) for a, b in zip(new, old_losses["learned"])) <= 1e-6


@pytest.mark.slow
def test_compiled_step_matches_eager(old_losses):
    """Compilation takes ~20-40 s on two loaded cores."""
    new = step_losses("learned", compile=True)
    assert max(abs(a - b) for a, b in zip(new, old_losses["learned"])) <= 1e-6


def test_bf16_mixed_close_to_float32_and_runs_the_fused_op(old_losses, monkeypatch):
    from crnn_plugins.fast_weights import reference as fastweights_reference

    calls = []
    real = torch.ops.crnn.fastweights_fwd

    class Spy:  # counts the fused op's calls; the reference must not run
        def __call__(self, *args):
            calls.append(args[0].dtype)
            return real(*args)

    monkeypatch.setattr(torch.ops.crnn, "fastweights_fwd", Spy())
    monkeypatch.setattr(fastweights_reference, "fastweights_reference",
                        lambda *a, **k: pytest.fail("the reference ran under bf16-mixed"))
    new = step_losses("learned", precision="bf16-mixed")
    assert len(calls) >= STEPS
    assert torch.bfloat16 in calls, "under autocast the op receives the bfloat16 projection"
    old = old_losses["learned"]
    assert 0 < abs(new[0] - old[0]) <= 2e-3, "step 1: the same weights, bfloat16 rounding only"
    assert max(abs(a - b) for a, b in zip(new, old)) <= 6e-2
    assert abs(sum(new[-16:]) - sum(old[-16:])) / 16 <= 1e-2, "the last 16 steps' mean loss"


def test_grads_finite_one_check_for_all():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.float64))
    a.grad, b.grad = torch.tensor([1.0, -2.0, 3.0]), torch.ones(2, 2, dtype=torch.float64)
    assert grads_finite([a, b])
    assert a.grad.tolist() == [1.0, -2.0, 3.0], "the check leaves the gradients' values alone"
    b.grad[1, 0] = float("nan")
    assert not grads_finite([a, b])
    b.grad[1, 0] = float("-inf")
    assert not grads_finite([a, b])
    assert grads_finite([torch.nn.Parameter(torch.zeros(1))]), "no gradient at all counts as finite"


def test_grads_finite_one_dtype_and_sparse_gradients():
    a, b = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(2))
    a.grad, b.grad = torch.ones(3), torch.ones(2)
    assert grads_finite(p for p in (a, b)), "the one-dtype path takes any iterable"
    b.grad[1] = float("inf")
    assert not grads_finite([a, b]), "the one-dtype path sees an inf in the last gradient"
    s = torch.nn.Parameter(torch.zeros(4))
    s.grad = torch.sparse_coo_tensor([[1]], [2.0], (4,), check_invariants=True)
    b.grad[1] = 0.0
    assert grads_finite([a, s, b])
    s.grad = torch.sparse_coo_tensor([[1]], [float("nan")], (4,), check_invariants=True)
    assert not grads_finite([a, s, b]), "a sparse gradient is checked on its own"


def test_precision_option_is_in_the_identity_the_speed_options_are_not():
    spec = ModelSpec(cell="fastweights", init="zero", task="art")
    base = RunConfig(spec, TrainConfig()).to_json()
    ident = checkpoint_identity(base)
    for change, same in (({"compile": True}, True), ({"adam_impl": "for-loop"}, True),
                         ({"precision": "bf16-mixed"}, False)):
        other = json.loads(json.dumps(base))
        other["train"].update(change)
        assert (checkpoint_identity(other) == ident) is same, change
    old = json.loads(json.dumps(base))  # a config.json written before these options existed
    for name in ("precision", "compile", "adam_impl"):
        del old["train"][name]
    assert identity_matches(checkpoint_identity(old), ident), "runs from before the options still resume"


def test_precision_refused_where_unsupported():
    from crnn_core.training.step import check_precision

    with pytest.raises(ConfigError, match="train.precision=bf16-mixed needs a cpu or cuda device"):
        check_precision("bf16-mixed", torch.device("meta"))
    check_precision("bf16-mixed", torch.device("cpu"))
    assert dataclasses.fields(TrainConfig)  # the option exists with a help text below
    assert any(f.name == "precision" and f.metadata["help"] for f in dataclasses.fields(TrainConfig))


def test_art_projects_its_table_and_the_model_uses_it(monkeypatch):
    spec = ModelSpec(cell="fastweights", init="zero", task="art", cell_options={"backend": "fused"},
                     task_options={"train_size": 64, "val_size": 64})
    torch.manual_seed(0)
    built = build_model(spec, get_plugins())
    model, batch = built.model, built.task.dataset("train")
    tm, cell = model.task_module, model.cell
    torch.testing.assert_close(tm.encode_projected(batch, cell.input_projection), cell.U(tm.encode(batch)),
                               rtol=1e-6, atol=1e-6)
    eager = model(batch)  # the first call checks the contract through the plain path
    monkeypatch.setattr(type(tm), "encode", lambda *a: pytest.fail("encode ran: the projected path was not taken"))
    torch.testing.assert_close(model(batch), eager, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="projected inputs must be"):
        cell.forward_projected(torch.zeros(2, 3, cell.hidden_size + 1))


@pytest.mark.parametrize("distribution", ["none", "normal"])
def test_learned_states_from_the_context_table_unless_sampling(distribution):
    spec = ModelSpec(cell="fastweights", init="learned", task="art", cell_options={"backend": "fused"},
                     init_options={"distribution": distribution}, task_options={"train_size": 64, "val_size": 64})
    torch.manual_seed(0)
    built = build_model(spec, get_plugins())
    model, batch = built.model, {k: v[:16] for k, v in built.task.dataset("train").items()}
    model.eval()
    plain = model.initial_state(batch, 16, sample=False)  # before the contract check: the plain path
    model(batch)  # checks the contract; from now on the table path may run
    calls = []
    real_context = type(model.task_module).context
    type(model.task_module).context = lambda self, b: calls.append(1) or real_context(self, b)
    try:
        table = model.initial_state(batch, 16, sample=False)
        assert calls == [], "a deterministic learned init goes through the context table"
        for name in plain:
            torch.testing.assert_close(table[name], plain[name], rtol=1e-5, atol=1e-6)
        model.train()
        model.initial_state(batch, 16)  # sample=None while training: normal draws per example
        assert calls == ([1] if distribution == "normal" else []), "a sampling init sees each example's context"
    finally:
        type(model.task_module).context = real_context


def test_zero_init_and_the_projected_path_skip_A0_and_A_T(monkeypatch):
    """The zero init's states are broadcast constants, which the cell passes to the op as
    ``A0=None`` (nothing materialised or read); TaskModel, which reads only the outputs,
    asks the cell for no final state, so the op skips A_T."""
    from crnn_core.interfaces.cell import constant_state, is_zero_constant

    assert is_zero_constant(constant_state(4, (3, 3), 0.0))
    assert not is_zero_constant(constant_state(4, (3, 3), 0.5)), "a nonzero constant is materialised"
    assert not is_zero_constant(torch.zeros(4, 3, 3)), "a real tensor is not inspected"
    assert not is_zero_constant(torch.zeros(()).expand(4, 3, 3).requires_grad_(True)), "a learnable one keeps its grad"
    spec = ModelSpec(cell="fastweights", init="zero", task="art", cell_options={"backend": "fused"},
                     task_options={"train_size": 64, "val_size": 64})
    torch.manual_seed(0)
    built = build_model(spec, get_plugins())
    model, batch = built.model, built.task.dataset("train")
    state = model.initial_state(batch, 64)
    assert all(s == 0 for s in state["A"].stride()), "the zero init returns a broadcast view"
    calls = []
    real = torch.ops.crnn.fastweights_fwd
    names = [argument.name for argument in real.default._schema.arguments]

    class Spy:
        def __call__(self, *args):
            given = dict(zip(names, args))
            calls.append((given["A0"].shape, given.get("final_state", True)))
            return real(*args)

    first = model(batch)  # the contract-checking pass, through the cell's full forward (final state kept)
    monkeypatch.setattr(torch.ops.crnn, "fastweights_fwd", Spy())
    torch.testing.assert_close(model(batch), first, rtol=1e-5, atol=1e-6)
    assert calls == [((0,), False)], "the projected pass: an empty A0 and final_state=False"


def test_broadcast_source_finds_the_matrix_an_A0_tiles():
    """``broadcast_source`` returns the ``[*shape]`` tensor of which a state is an exact
    broadcast view, and None for anything else (a copy, a partial view, a transposed view, a
    view made under ``no_grad`` that autograd does not connect to its source)."""
    from crnn_core.interfaces.cell import broadcast_source

    P = torch.randn(3, 3, requires_grad=True)
    assert broadcast_source(P.expand(4, 3, 3)) is P
    assert broadcast_source(P.expand(4, 3, 3).contiguous()) is None, "a materialised copy"
    assert broadcast_source(torch.randn(4, 3, 3)) is None
    assert broadcast_source(P[:, :2].unsqueeze(0).expand(4, 3, 2)) is None, "a view of part of its source"
    assert broadcast_source(P.t().expand(4, 3, 3)) is None, "a transposed view"
    detached = broadcast_source(P.detach().expand(4, 3, 3))
    assert detached is not None and not detached.requires_grad, "a detached view's source needs no grad either"
    with torch.no_grad():
        cut = P.expand(4, 3, 3)  # reports requires_grad, but autograd does not lead from it to P
    assert broadcast_source(cut) is None, "a view made under no_grad must not pass P's gradient on"


def test_the_free_init_passes_its_A0_once_to_the_fused_op(monkeypatch):
    """The free init tiles its variables over the batch as views; the cell hands the fused op
    the one ``[H, H]`` A_0 (no copy per example), and the gradients equal the reference
    backend's on the same model."""
    spec = ModelSpec(cell="fastweights", init="free", task="art", cell_options={"backend": "fused"},
                     init_options={"init_std": 0.1}, task_options={"train_size": 64, "val_size": 64})
    torch.manual_seed(0)
    built = build_model(spec, get_plugins())
    model, batch = built.model, built.task.dataset("train")
    model(batch)  # the contract-checking pass
    calls = []
    real = torch.ops.crnn.fastweights_fwd

    def spy(*args):
        calls.append(tuple(args[2].shape))
        return real(*args)

    grads = {}
    for backend in ("fused", "reference"):
        model.cell.backend = backend
        model.cell._unrolls.clear()
        model.zero_grad()
        with monkeypatch.context() as m:
            m.setattr(torch.ops.crnn, "fastweights_fwd", spy)
            built.task.loss(model(batch), batch).backward()
        grads[backend] = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    H = model.cell.hidden_size
    assert calls == [(H, H)], "the fused op got the free init's A0 as one [H, H] matrix"
    assert grads["fused"].keys() == grads["reference"].keys()
    for name, g in grads["reference"].items():
        torch.testing.assert_close(grads["fused"][name], g, rtol=1e-4, atol=1e-5, msg=name)
