"""The `lstm` cell: ``torch.nn.LSTM`` (oneDNN / cuDNN) started from a given ``(h, c)``."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor, nn

from crnn_core import Cell, State, hookimpl, option, require
from crnn_core.resources import check_parameters


@dataclasses.dataclass
class LSTMOptions:
    hidden_size: int = option(128, "number of hidden units")
    forget_bias: float = option(1.0, "initial forget-gate bias (TensorFlow's default 1.0; 0 for PyTorch's)")

    def __post_init__(self) -> None:
        require(self.hidden_size > 0, f"hidden_size must be positive, got {self.hidden_size}")


class LSTMCell(Cell):
    """Long short-term memory on torch.nn.LSTM; state h and c, forget-gate bias option."""

    name = "lstm"
    Options = LSTMOptions

    def __init__(self, input_size: int, options: LSTMOptions) -> None:
        super().__init__(input_size, options)
        H = options.hidden_size
        check_parameters(4 * H * (input_size + H + 2), "the LSTM weights", "cell.hidden_size")
        self.lstm = nn.LSTM(input_size, H, batch_first=True)
        with torch.no_grad():
            # PyTorch gate order: input, forget, cell, output; two bias vectors are summed.
            self.lstm.bias_ih_l0[H : 2 * H].fill_(options.forget_bias)
            self.lstm.bias_hh_l0[H : 2 * H].zero_()

    @property
    def hidden_size(self) -> int:
        return self.options.hidden_size

    def state_spec(self) -> dict[str, tuple[int, ...]]:
        H = self.options.hidden_size
        return {"h": (H,), "c": (H,)}

    def forward(self, inputs: Tensor, state: State) -> tuple[Tensor, State]:
        h0 = state["h"].unsqueeze(0).contiguous()
        c0 = state["c"].unsqueeze(0).contiguous()
        outputs, (h, c) = self.lstm(inputs, (h0, c0))
        return outputs, {"h": h.squeeze(0), "c": c.squeeze(0)}

    def describe_backend(self) -> str:
        return "torch.nn.LSTM"


@hookimpl
def register_cells(register) -> None:
    register(LSTMCell)
