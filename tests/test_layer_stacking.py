"""FastWeights' nn.LSTM constructor features: num_layers, dropout, bidirectional, device/dtype, the state layout."""

from __future__ import annotations

import pytest
import torch

from crnn_core.base.env import CrnnWarning
from crnn_core.interfaces.cell import constant_state
from crnn_core.layers.contextual import ContextualRNN
from crnn_plugins.fast_weights.layer import FastWeights

I, H, B, T = 3, 4, 3, 5
SINGLE_KEYS = ["W", "U.weight", "U.bias", "norm.weight", "norm.bias"]


def layer(**kwargs) -> FastWeights:
    torch.manual_seed(0)
    fw = FastWeights(I, H, backend="reference", dtype=torch.float64, bias_init="glorot_uniform", **kwargs)
    with torch.no_grad():  # away from the identity init, so that every parameter matters
        for p in fw.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return fw


def single(stacked: FastWeights, suffix: str, width: int) -> FastWeights:
    """A one-layer, one-direction layer holding ``stacked``'s parameters of ``suffix``."""
    one = FastWeights(width, H, backend="reference", dtype=torch.float64)
    one.load_state_dict({key: stacked.state_dict()[key.replace(".", suffix + ".", 1) if "." in key else key + suffix]
                         for key in SINGLE_KEYS})
    return one


def random_state(fw: FastWeights, batch: int = B) -> dict[str, torch.Tensor]:
    return {k: 0.3 * torch.randn(batch, *shape, dtype=torch.float64) for k, shape in fw.state_spec().items()}


def test_one_layer_keeps_its_parameter_names_and_state_layout():
    fw = FastWeights(I, H)
    assert sorted(fw.state_dict()) == sorted(SINGLE_KEYS)
    assert fw.hidden_size == H and fw.state_spec() == {"h": (H,), "A": (H, H)}
    FastWeights(I, H).load_state_dict(fw.state_dict())  # a checkpoint of a one-layer layer loads


def test_parameter_names_follow_nn_lstm_suffixes():
    names = set(FastWeights(I, H, num_layers=2, bidirectional=True).state_dict())
    for suffix in ("", "_reverse", "_l1", "_l1_reverse"):
        assert {"W" + suffix, f"U{suffix}.weight", f"U{suffix}.bias", f"norm{suffix}.weight"} <= names
    assert FastWeights(I, H, num_layers=2, bidirectional=True).U_l1.in_features == 2 * H


def test_stacked_layers_equal_the_composition_of_single_layers():
    fw = layer(num_layers=3)
    x, state = torch.randn(B, T, I, dtype=torch.float64), random_state(fw)
    out, final = fw(x, state)
    inputs, hs, As = x, [], []
    for l, suffix in enumerate(["", "_l1", "_l2"]):
        inputs, s = single(fw, suffix, I if l == 0 else H)(inputs, {"h": state["h"][:, l], "A": state["A"][:, l]})
        hs.append(s["h"])
        As.append(s["A"])
    torch.testing.assert_close(out, inputs)
    torch.testing.assert_close(final["h"], torch.stack(hs, 1))
    torch.testing.assert_close(final["A"], torch.stack(As, 1))


def test_bidirectional_is_a_forward_and_a_flipped_reverse_direction():
    fw = layer(bidirectional=True)
    x, state = torch.randn(B, T, I, dtype=torch.float64), random_state(fw)
    out, final = fw(x, state)
    fwd, s_f = single(fw, "", I)(x, {"h": state["h"][:, 0], "A": state["A"][:, 0]})
    rev, s_r = single(fw, "_reverse", I)(x.flip(1), {"h": state["h"][:, 1], "A": state["A"][:, 1]})
    torch.testing.assert_close(out, torch.cat([fwd, rev.flip(1)], -1))
    torch.testing.assert_close(final["h"], torch.stack([s_f["h"], s_r["h"]], 1))
    torch.testing.assert_close(final["A"], torch.stack([s_f["A"], s_r["A"]], 1))
    assert fw.hidden_size == 2 * H and fw.direction_size == H


def test_state_layout_is_layer_major_direction_minor():
    fw = layer(num_layers=2, bidirectional=True)
    out, final = fw(torch.randn(B, T, I, dtype=torch.float64))
    assert fw.state_spec() == {"h": (4, H), "A": (4, H, H)}
    assert final["h"].shape == (B, 4, H) and final["A"].shape == (B, 4, H, H)
    torch.testing.assert_close(final["h"][:, 2], out[:, -1, :H])  # last layer, forward: its last step
    torch.testing.assert_close(final["h"][:, 3], out[:, 0, H:])  # last layer, reverse: it ends at step 0


@pytest.mark.parametrize("lengths", [None, [5, 2, 4]])
def test_bidirectional_causality(lengths):
    fw = layer(bidirectional=True)
    x = torch.randn(B, T, I, dtype=torch.float64, requires_grad=True)
    out, _ = fw(x, lengths=lengths)
    ends = lengths or [T] * B
    for b in range(B):
        for t in range(ends[b]):
            for half, allowed in ((slice(0, H), range(0, t + 1)), (slice(H, 2 * H), range(t, ends[b]))):
                (grad,) = torch.autograd.grad(out[b, t, half].sum(), x, retain_graph=True)
                touched = {s for s in range(T) if grad[b, s].abs().sum() > 0}
                assert touched <= set(allowed) and t in touched, (b, t, half, touched)
                assert grad[[c for c in range(B) if c != b]].abs().sum() == 0


def test_dropout_between_layers_in_train_mode_only():
    fw = layer(num_layers=2, dropout=0.5)
    x = torch.randn(B, T, I, dtype=torch.float64)
    fw.train()
    assert not torch.equal(fw(x)[0], fw(x)[0])
    fw.eval()
    torch.testing.assert_close(fw(x)[0], fw(x)[0], rtol=0, atol=0)


def test_dropout_is_not_applied_after_the_last_layer():
    fw = layer(num_layers=2, dropout=1.0).train()  # layer 1 reads zeros; its own outputs are kept
    out, _ = fw(torch.randn(B, T, I, dtype=torch.float64))
    expected, _ = single(fw, "_l1", H)(torch.zeros(B, T, H, dtype=torch.float64))
    assert out.abs().sum() > 0
    torch.testing.assert_close(out, expected)


def test_dropout_with_one_layer_warns():
    with pytest.warns(CrnnWarning, match="dropout"):
        FastWeights(I, H, dropout=0.2)


def test_device_and_dtype_place_every_parameter():
    fw = FastWeights(I, H, num_layers=2, bidirectional=True, device="meta", dtype=torch.float64)
    assert {(p.device.type, p.dtype) for p in fw.parameters()} == {("meta", torch.float64)}
    with pytest.raises(ValueError, match="dtype"):
        FastWeights(I, H, dtype=torch.int64)


@pytest.mark.parametrize("argument, value", [("num_layers", 0), ("num_layers", 1.5), ("dropout", 1.5),
                                             ("dropout", "0.1"), ("bidirectional", 1)])
def test_bad_constructor_arguments_name_themselves(argument, value):
    with pytest.raises(ValueError, match=argument):
        FastWeights(I, H, **{argument: value})


def test_zero_constant_and_tiled_states_equal_their_materialised_copies():
    fw = layer(num_layers=2, bidirectional=True)
    x = torch.randn(B, T, I, dtype=torch.float64)
    zero = {k: constant_state(B, s, 0.0, dtype=torch.float64) for k, s in fw.state_spec().items()}
    torch.testing.assert_close(fw(x, zero), fw(x))
    source = {k: torch.randn(*s, dtype=torch.float64, requires_grad=True) for k, s in fw.state_spec().items()}
    tiled = {k: v.expand(B, *v.shape) for k, v in source.items()}
    out, final = fw(x, tiled)
    (out.sum() + final["A"].sum()).backward()
    grads = {k: v.grad.clone() for k, v in source.items()}
    for v in source.values():
        v.grad = None
    copies = {k: v.expand(B, *v.shape).contiguous() for k, v in source.items()}
    out2, final2 = fw(x, copies)
    (out2.sum() + final2["A"].sum()).backward()
    torch.testing.assert_close(out, out2)
    torch.testing.assert_close(grads, {k: v.grad for k, v in source.items()})


@pytest.mark.parametrize("init", ["zero", "free", "learned"])
def test_init_strategies_build_the_stacked_bidirectional_state(init):
    fw = layer(num_layers=2, bidirectional=True)
    rnn = ContextualRNN(fw, init=init, context_size=6 if init == "learned" else None).double()
    context = torch.randn(B, 6, dtype=torch.float64) if init == "learned" else None
    out, final = rnn(torch.randn(B, T, I, dtype=torch.float64), context)
    assert out.shape == (B, T, 2 * H) and rnn.hidden_size == 2 * H
    assert final["A"].shape == (B, 4, H, H)
    out.sum().backward()
    assert all(p.grad is not None for p in rnn.init.parameters())


def test_projected_forward_for_stacked_layers_and_refused_when_bidirectional():
    fw = layer(num_layers=2)
    x = torch.randn(B, T, I, dtype=torch.float64)
    torch.testing.assert_close(fw.forward_projected(fw.input_projection(x)), fw(x))
    bi = layer(bidirectional=True)
    assert bi.input_projection is None
    with pytest.raises(ValueError, match="bidirectional"):
        bi.forward_projected(torch.zeros(B, T, H, dtype=torch.float64))


@pytest.mark.parametrize("bidirectional", [False, True])
def test_task_model_trains_a_stacked_layer(bidirectional, monkeypatch):
    from crnn_core.layers.model import ModelSpec, TaskModel, build_model
    from crnn_core.plugin_manager.manager import get_plugins

    spec = ModelSpec(cell="fastweights", init="learned", task="art", task_options={"train_size": 16, "val_size": 16})
    built = build_model(spec, get_plugins())
    batch = built.task.dataset("train")
    fw = FastWeights(built.model.cell.input_size, H, num_layers=2, bidirectional=bidirectional, backend="reference")
    net = built.model.context_net
    rnn = ContextualRNN(fw, init="learned", context_size=net.out_features if net is not None else built.task.context_size,
                        context_net=net)
    model = TaskModel(built.task.build_module(fw.hidden_size), rnn)
    first = model(batch)  # the plain path, with the contract check
    if not bidirectional:
        monkeypatch.setattr(type(model.task_module), "encode", lambda *a: pytest.fail("the projected path was not taken"))
    second = model(batch)  # projected in the task where the layer offers it (unidirectional)
    torch.testing.assert_close(first, second, rtol=1e-5, atol=1e-6)
    second.sum().backward()
    assert fw.W_l1.grad is not None and fw.W_l1.grad.abs().sum() > 0


def test_a_layer_pickled_before_layers_and_directions_unpickles():
    import pickle

    fw = FastWeights(I, H)
    for name in ("num_layers", "dropout", "bidirectional"):
        del fw.__dict__[name]
    fw.__dict__["hidden_size"] = fw.__dict__.pop("direction_size")  # the old plain attribute
    old = pickle.loads(pickle.dumps(fw))
    assert (old.hidden_size, old.num_layers, old.bidirectional, old.dropout) == (H, 1, False, 0.0)
    assert old(torch.randn(B, T, I))[0].shape == (B, T, H)


def test_cell_options_num_layers_and_dropout_build_a_stacked_layer():
    from crnn_core.interfaces.options import build_options
    from crnn_plugins.cells.fastweights import FastWeightsCell, FastWeightsOptions

    options = build_options(FastWeightsOptions, {"num_layers": "2", "dropout": "0.25", "hidden_size": "6"}, "cell")
    cell = FastWeightsCell(I, options)
    assert (cell.num_layers, cell.dropout, cell.hidden_size) == (2, 0.25, 6)
    assert cell.state_spec() == {"h": (2, 6), "A": (2, 6, 6)}
    assert cell.U_l1.weight.shape == (6, 6)
    assert FastWeightsCell(I, build_options(FastWeightsOptions, {}, "cell")).num_layers == 1


def test_crnn_run_trains_a_stacked_fastweights_cell(runner, tmp_path):
    from .conftest import invoke

    out = tmp_path / "run"
    result = invoke(runner, ["run", "--cell", "fastweights", "--init", "free", "--task", "art", "--epochs", "1",
                             "--set", "task.train_size=128", "--set", "task.val_size=64", "--set", "train.threads=1",
                             "--set", "cell.hidden_size=8", "--set", "cell.num_layers=2", "--set", "cell.dropout=0.1",
                             "--out", str(out)])
    assert result.exit_code == 0, result.output
    model = torch.load(out / "checkpoints" / "last.pt", weights_only=False)["model"]
    assert {"rnn.cell.W", "rnn.cell.W_l1"} <= set(model), "the second layer is trained and saved"


def test_crnn_run_warns_once_of_dropout_with_one_layer(tmp_path):
    """The shape-only pre-build (model.check_sizes) builds the cell too; only the real build warns."""
    import os
    import subprocess
    import sys

    proc = subprocess.run([sys.executable, "-m", "crnn_core", "run", "--cell", "fastweights", "--init", "zero",
                           "--task", "art", "--epochs", "1", "-q", "--set", "task.train_size=128",
                           "--set", "task.val_size=64", "--set", "train.threads=1", "--set", "cell.hidden_size=8",
                           "--set", "cell.dropout=0.3", "--out", str(tmp_path / "run")],
                          capture_output=True, text=True, env=dict(os.environ, CRNN_NO_PLUGINS="1"), timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("dropout=0.3 applies between layers") == 1, proc.stderr
