"""Padded batches with lengths and PackedSequence, through FastWeights and ContextualRNN."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from crnn_core.layers.contextual import ContextualRNN
from crnn_core.layers.sequences import reverse_within
from crnn_plugins.cells.lstm import LSTMCell, LSTMOptions
from crnn_plugins.fast_weights.layer import FastWeights

I, H, T = 3, 4, 6
LENGTHS = [6, 2, 4, 1]
B = len(LENGTHS)


def layer(**kwargs) -> FastWeights:
    torch.manual_seed(0)
    kwargs = {"backend": "reference", "num_layers": 2, "bidirectional": True, **kwargs}
    fw = FastWeights(I, H, dtype=torch.float64, bias_init="glorot_uniform", **kwargs)
    with torch.no_grad():
        for p in fw.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return fw


def padded_inputs() -> torch.Tensor:
    torch.manual_seed(1)
    x = torch.randn(B, T, I, dtype=torch.float64)
    for b, n in enumerate(LENGTHS):
        x[b, n:] = float("nan")  # padding must not reach any result
    return x


def test_reverse_within_reverses_each_example_in_its_own_length():
    x = torch.arange(B * T, dtype=torch.float64).view(B, T, 1)
    lengths = torch.tensor(LENGTHS)
    got = reverse_within(x, lengths)
    for b, n in enumerate(LENGTHS):
        torch.testing.assert_close(got[b, :n], x[b, :n].flip(0))
        torch.testing.assert_close(got[b, n:], x[b, n:])
    torch.testing.assert_close(reverse_within(got, lengths), x)


def fused_takes_lengths() -> bool:
    """Whether the fused op runs here and implements lengths (else its tests skip)."""
    from crnn_plugins.fast_weights import fused

    if not fused.device_status("cpu")[0]:
        return False
    xp = torch.zeros(1, 2, H, dtype=torch.float64)
    try:
        fused.fastweights_fused(xp, xp[:, 0], None, torch.eye(H, dtype=torch.float64), torch.ones(H, dtype=torch.float64),
                                torch.zeros(H, dtype=torch.float64), 0.9, 0.5, 1, lengths=torch.tensor([1]))
    except NotImplementedError:
        return False
    return True


@pytest.mark.parametrize("backend", ["reference", "fused"])
def test_each_example_of_a_padded_batch_equals_itself_alone(backend):
    if backend == "fused" and not fused_takes_lengths():
        pytest.skip("the fused op here does not take lengths")
    fw = layer(backend=backend)
    x = padded_inputs().requires_grad_()
    state = {k: 0.3 * torch.randn(B, *s, dtype=torch.float64) for k, s in fw.state_spec().items()}
    weights = torch.randn(B, T, 2 * H, dtype=torch.float64)
    out, final = fw(x, state, lengths=torch.tensor(LENGTHS))
    loss = (out * weights).sum() + final["h"].pow(2).sum() + final["A"].sum()
    param_grads = torch.autograd.grad(loss, [x, *fw.parameters()])
    assert all(torch.isfinite(g).all() for g in param_grads)
    summed = [torch.zeros_like(p) for p in fw.parameters()]
    for b, n in enumerate(LENGTHS):
        xb = x.detach()[b:b + 1, :n].clone().requires_grad_()
        out_b, final_b = fw(xb, {k: v[b:b + 1] for k, v in state.items()})
        torch.testing.assert_close(out[b, :n], out_b[0])
        assert out[b, n:].abs().sum() == 0
        torch.testing.assert_close(final["h"][b], final_b["h"][0])
        torch.testing.assert_close(final["A"][b], final_b["A"][0])
        loss_b = (out_b * weights[b:b + 1, :n]).sum() + final_b["h"].pow(2).sum() + final_b["A"].sum()
        grads_b = torch.autograd.grad(loss_b, [xb, *fw.parameters()])
        torch.testing.assert_close(param_grads[0][b, :n], grads_b[0][0])
        assert param_grads[0][b, n:].abs().sum() == 0
        summed = [s + g for s, g in zip(summed, grads_b[1:])]
    torch.testing.assert_close(list(param_grads[1:]), summed)


def test_full_lengths_equal_no_lengths_and_a_list_equals_a_tensor():
    fw = layer()
    x = torch.randn(B, T, I, dtype=torch.float64)
    torch.testing.assert_close(fw(x, lengths=[T] * B), fw(x))
    torch.testing.assert_close(fw(x, lengths=LENGTHS), fw(x, lengths=torch.tensor(LENGTHS)))


def test_time_major_inputs_take_lengths():
    fw, tm = layer(), layer(batch_first=False)
    x = padded_inputs()
    out, final = fw(x, lengths=LENGTHS)
    out_t, final_t = tm(x.transpose(0, 1).contiguous(), lengths=LENGTHS)
    torch.testing.assert_close(out_t.transpose(0, 1), out)
    torch.testing.assert_close(final_t, final)


@pytest.mark.parametrize("enforce_sorted", [False, True])
def test_packed_sequence_round_trip_equals_the_padded_path(enforce_sorted):
    fw = layer()
    order = sorted(range(B), key=lambda b: -LENGTHS[b]) if enforce_sorted else list(range(B))
    x, lengths = padded_inputs()[order], torch.tensor(LENGTHS)[order]
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=enforce_sorted)
    out, final = fw(packed)
    expected, expected_final = fw(x, lengths=lengths)
    assert isinstance(out, type(packed))
    assert torch.equal(out.batch_sizes, packed.batch_sizes)
    padded, got_lengths = pad_packed_sequence(out, batch_first=True, total_length=T)
    assert torch.equal(got_lengths, lengths)
    torch.testing.assert_close(padded, expected)
    torch.testing.assert_close(final, expected_final)  # in the original batch order


def test_auto_backend_with_lengths_matches_the_reference():
    x = padded_inputs().float()
    ref = FastWeights(I, H, backend="reference", num_layers=2)
    auto = FastWeights(I, H, backend="auto", num_layers=2)
    auto.load_state_dict(ref.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a fused op without lengths falls back with a warning
        got = auto(x, lengths=LENGTHS)
    torch.testing.assert_close(got, ref(x, lengths=LENGTHS), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("bad, pattern", [
    ([6, 2, 4], "one value per example"),
    ([6, 2, 4, 0], r"in \[1, 6\]"),
    ([6, 2, 4, 7], r"in \[1, 6\]"),
    ([6.0, 2, 4, 1], "ints"),
    (torch.tensor([6.0, 2, 4, 1]), "int64"),
    (torch.tensor([[6, 2, 4, 1]]), "1-D"),
])
@pytest.mark.parametrize("module", ["fastweights", "lstm"])
def test_bad_lengths_are_a_value_error_naming_lengths(bad, pattern, module):
    x = torch.randn(B, T, I, dtype=torch.float64)
    run = (layer() if module == "fastweights" else ContextualRNN(nn.LSTM(I, H, batch_first=True).double()))
    with pytest.raises(ValueError, match=f"lengths.*{pattern}"):
        run(x, lengths=bad)


@pytest.mark.parametrize("kind", [nn.LSTM, nn.GRU, nn.RNN])
def test_contextual_rnn_with_torch_rnn_and_lengths_equals_it_on_the_packed_sequence(kind):
    torch.manual_seed(0)
    module = kind(I, H, batch_first=True, num_layers=2, bidirectional=True).double()
    rnn = ContextualRNN(module, init="free").double()
    x, lengths = padded_inputs().nan_to_num(0.0), torch.tensor(LENGTHS)
    out, final = rnn(x, lengths=lengths)
    state0 = rnn.initial_state(B)
    hx = {k: v.transpose(0, 1).contiguous() for k, v in state0.items()}
    packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
    ref_out, ref_h = module(packed, (hx["h"], hx["c"]) if kind is nn.LSTM else hx["h"])
    torch.testing.assert_close(out, pad_packed_sequence(ref_out, batch_first=True, total_length=T)[0])
    torch.testing.assert_close(final["h"], (ref_h[0] if kind is nn.LSTM else ref_h).transpose(0, 1))
    packed_out, packed_final = rnn(packed)
    assert isinstance(packed_out, type(packed))
    torch.testing.assert_close(packed_out.data, ref_out.data)
    torch.testing.assert_close(packed_final, final)


def test_contextual_rnn_passes_lengths_to_fastweights():
    fw = layer()
    rnn = ContextualRNN(fw, init="learned", context_size=5).double()
    x, context = padded_inputs(), torch.randn(B, 5, dtype=torch.float64)
    out, final = rnn(x, context, lengths=LENGTHS)
    expected = fw(x, rnn.initial_state(B, context), lengths=LENGTHS)
    torch.testing.assert_close((out, final), expected)
    packed = pack_padded_sequence(x, torch.tensor(LENGTHS), batch_first=True, enforce_sorted=False)
    packed_out, packed_final = rnn(packed, context)
    torch.testing.assert_close(pad_packed_sequence(packed_out, batch_first=True, total_length=T)[0], out)
    torch.testing.assert_close(packed_final, final)


def test_the_lstm_cell_takes_lengths():
    torch.manual_seed(0)
    cell = LSTMCell(I, LSTMOptions(hidden_size=H)).double()
    rnn = ContextualRNN(cell, init="free").double()
    x, lengths = padded_inputs().nan_to_num(0.0), torch.tensor(LENGTHS)
    out, final = rnn(x, lengths=lengths)
    state0 = rnn.initial_state(B)
    ref_out, (h, c) = cell.lstm(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False),
                                (state0["h"].unsqueeze(0).contiguous(), state0["c"].unsqueeze(0).contiguous()))
    torch.testing.assert_close(out, pad_packed_sequence(ref_out, batch_first=True, total_length=T)[0])
    torch.testing.assert_close(final, {"h": h[0], "c": c[0]})


class NoLengthsCell(nn.Module):
    """A cell with the contract but a forward that takes no lengths."""

    hidden_size = H

    def __init__(self) -> None:
        super().__init__()
        self.gru = nn.GRU(I, H, batch_first=True)

    def state_spec(self) -> dict[str, tuple[int, ...]]:
        return {"h": (H,)}

    def forward(self, inputs: torch.Tensor, state: dict) -> tuple[torch.Tensor, dict]:
        outputs, h = self.gru(inputs, state["h"].unsqueeze(0).contiguous())
        return outputs, {"h": h[0]}


def test_contextual_rnn_refuses_lengths_for_a_cell_without_them():
    rnn = ContextualRNN(NoLengthsCell())
    assert rnn(torch.randn(B, T, I))[0].shape == (B, T, H)
    with pytest.raises(ValueError, match="lengths.*NoLengthsCell"):
        rnn(torch.randn(B, T, I), lengths=LENGTHS)
    with pytest.raises(ValueError, match="lengths"):
        rnn(pack_padded_sequence(torch.randn(B, T, I), torch.tensor(LENGTHS), batch_first=True, enforce_sorted=False))


@pytest.mark.parametrize("run", ["fastweights-reference", "fastweights-fused", "unroll", "contextual-fastweights",
                                 "contextual-lstm", "packed"])
def test_lengths_values_are_read_once_per_call(run, monkeypatch):
    """One min/max read of lengths per call, however many layers, directions and wrappers it passes."""
    from crnn_plugins.fast_weights import fused as ff
    from crnn_plugins.fast_weights.layer import fastweights_unroll

    if run == "fastweights-fused" and not ff.load_status()[0]:
        pytest.skip("the fused kernel is not available")
    x, lengths = padded_inputs().nan_to_num(0.0), torch.tensor(LENGTHS)
    calls, aminmax = [], torch.aminmax
    monkeypatch.setattr(torch, "aminmax", lambda t: calls.append(t) or aminmax(t))
    if run == "unroll":
        xp, W = torch.randn(B, T, H, dtype=torch.float64), torch.eye(H, dtype=torch.float64)
        ones, zeros = torch.ones(H, dtype=torch.float64), torch.zeros(H, dtype=torch.float64)
        fastweights_unroll(xp, torch.zeros(B, H, dtype=torch.float64), None, W, ones, zeros, 0.9, 0.5, 1,
                           backend="reference", lengths=lengths)
    elif run == "contextual-lstm":
        ContextualRNN(nn.LSTM(I, H, batch_first=True, num_layers=2).double())(x, lengths=lengths)
    elif run == "packed":
        ContextualRNN(layer())(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
    else:
        fw = layer(backend=run.split("-")[1] if run.startswith("fastweights") else "reference")
        (ContextualRNN(fw) if run.startswith("contextual") else fw)(x, lengths=lengths)
    assert len(calls) == 1


def test_lengths_all_equal_to_t_are_passed_on_as_none():
    from crnn_core.layers.sequences import check_lengths

    assert check_lengths([T] * B, B, T, torch.device("cpu")) is None
    assert torch.equal(check_lengths(LENGTHS, B, T, torch.device("cpu")), torch.tensor(LENGTHS))
