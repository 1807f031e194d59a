"""Batches of sequences of different lengths: right-padded with ``lengths``, or a ``PackedSequence``.

The conventions every recurrent layer of crnn follows (``FastWeights``, ``ContextualRNN``):
a padded batch ``[B, T, F]`` with ``lengths`` (B ints in [1, T]) runs example b on its first
``lengths[b]`` steps as if it were alone (zero outputs after them, the state after its own
last step); a ``PackedSequence`` is unpacked to that, run, and packed again with the same
ordering, so it comes back as nn.LSTM returns it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence


def check_lengths(lengths: object, batch: int, steps: int, device: torch.device) -> Tensor | None:
    """``lengths`` as the unrolls take it: None, or a 1-D int64 tensor of ``batch`` values in
    [1, ``steps``] on ``device`` (a list or tuple of ints is converted); a one-line ValueError otherwise.

    The public entry points (``FastWeights.forward``, ``fastweights_unroll``,
    ``ContextualRNN.forward``) call it once per call and the unrolls under them take its
    result as it is. Its values are read once (one min/max): lengths that all equal
    ``steps`` come back as None, so that they cost what no lengths cost. Under
    ``torch.compile`` the values are not read into Python (that would break the graph): the
    range is checked inside the graph instead (``torch._assert_async``, a RuntimeError naming
    lengths) and the tensor is returned as it is.
    """
    if lengths is None:
        return None
    if isinstance(lengths, (list, tuple)):
        if not all(isinstance(n, int) and not isinstance(n, bool) for n in lengths):
            raise ValueError(f"lengths must hold ints, got {[type(n).__name__ for n in lengths]}")
        lengths = torch.tensor(lengths, dtype=torch.int64, device=device)
    if not isinstance(lengths, Tensor):
        raise ValueError(f"lengths must be None, a 1-D int64 tensor or a list of ints, got {type(lengths).__name__}")
    if lengths.dtype != torch.int64:
        raise ValueError(f"lengths must be an int64 tensor, got {lengths.dtype}")
    if lengths.dim() != 1 or lengths.shape[0] != batch:
        raise ValueError(f"lengths must be 1-D with one value per example ({batch}), got shape {tuple(lengths.shape)}")
    if lengths.device != torch.device(device):
        raise ValueError(f"lengths must be on the inputs' device {device}, got {lengths.device}")
    if torch.compiler.is_compiling():
        torch._assert_async(((lengths >= 1) & (lengths <= steps)).all(),
                            f"lengths must be in [1, {steps}] (the number of steps)")
        return lengths
    if not batch:
        return lengths
    low, high = (int(v) for v in torch.stack(torch.aminmax(lengths)).tolist())
    if low < 1 or high > steps:
        raise ValueError(f"lengths must be in [1, {steps}] (the number of steps), got values in [{low}, {high}]")
    return None if low == steps else lengths


def reverse_within(x: Tensor, lengths: Tensor | None) -> Tensor:
    """``x [B, T, *]`` with each example's first ``lengths[b]`` steps in reverse order and its
    padding left in place (one batched gather); ``x.flip(1)`` without lengths. Its own inverse."""
    if lengths is None:
        return x.flip(1)
    steps = torch.arange(x.shape[1], device=x.device)
    index = lengths.unsqueeze(1) - 1 - steps  # [B, T]: L_b - 1 - t inside the example
    index = torch.where(index >= 0, index, steps)
    return x.gather(1, index.view(*index.shape, *([1] * (x.dim() - 2))).expand_as(x))


def unpack(packed: PackedSequence) -> tuple[Tensor, Tensor]:
    """A ``PackedSequence`` as a right-padded batch-first tensor ``[B, T, *]`` and its ``lengths``
    (int64, on the data's device), both in the original batch order."""
    padded, lengths = pad_packed_sequence(packed, batch_first=True)
    return padded, lengths.to(padded.device)


def repack(padded: Tensor, lengths: Tensor, like: PackedSequence) -> PackedSequence:
    """``padded [B, T, *]`` (original batch order) packed with ``like``'s ordering: the
    ``PackedSequence`` nn.LSTM returns for the input ``like``."""
    if like.sorted_indices is not None:
        padded, lengths = padded.index_select(0, like.sorted_indices), lengths.index_select(0, like.sorted_indices)
    data = pack_padded_sequence(padded, lengths.cpu(), batch_first=True, enforce_sorted=True).data
    return PackedSequence(data, like.batch_sizes, like.sorted_indices, like.unsorted_indices)


def run_torch_rnn(module: nn.RNNBase, inputs: Tensor, hx: Any, lengths: Tensor | None) -> tuple[Tensor, Any]:
    """``module(inputs, hx)`` for a batch-first ``nn.LSTM`` / ``GRU`` / ``RNN``; with ``lengths``
    over the packed sequence (each example up to its own end, as the final state), the outputs
    padded back to the input's T steps with zeros."""
    if lengths is None:
        return module(inputs, hx)
    packed = pack_padded_sequence(inputs, lengths.cpu(), batch_first=True, enforce_sorted=False)
    outputs, final = module(packed, hx)
    return pad_packed_sequence(outputs, batch_first=True, total_length=inputs.shape[1])[0], final
