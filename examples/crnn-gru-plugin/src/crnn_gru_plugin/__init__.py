"""Example crnn plugin: a `gru` cell and a `parity` task, discovered through the `crnn` entry point."""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crnn_core import Batch, Cell, State, Task, TaskModule, hookimpl, option, require


@dataclasses.dataclass
class GRUOptions:
    hidden_size: int = option(64, "number of hidden units")

    def __post_init__(self) -> None:
        require(self.hidden_size > 0, f"hidden_size must be positive, got {self.hidden_size}")


class GRUCell(Cell):
    """Gated recurrent unit on torch.nn.GRU; state h."""

    name = "gru"
    Options = GRUOptions

    def __init__(self, input_size: int, options: GRUOptions) -> None:
        super().__init__(input_size, options)
        self.gru = nn.GRU(input_size, options.hidden_size, batch_first=True)

    @property
    def hidden_size(self) -> int:
        return self.options.hidden_size

    def state_spec(self) -> dict[str, tuple[int, ...]]:
        return {"h": (self.options.hidden_size,)}

    def forward(self, inputs: Tensor, state: State) -> tuple[Tensor, State]:
        outputs, h = self.gru(inputs, state["h"].unsqueeze(0).contiguous())
        return outputs, {"h": h.squeeze(0)}


@dataclasses.dataclass
class ParityOptions:
    length: int = option(8, "bits per sequence")
    train_size: int = option(4000, "training sequences")
    val_size: int = option(1000, "validation sequences")
    data_seed: int = option(0, "seed of the data")

    def __post_init__(self) -> None:
        for name in ("length", "train_size", "val_size"):
            require(getattr(self, name) > 0, f"{name} must be positive, got {getattr(self, name)}")


class ParityModule(TaskModule):
    def __init__(self, hidden_size: int) -> None:
        super().__init__()
        self.out = nn.Linear(hidden_size, 2)

    def encode(self, batch: Batch) -> Tensor:
        return batch["bits"].unsqueeze(-1).float()

    def head(self, outputs: Tensor) -> Tensor:
        return self.out(outputs[:, -1])


class ParityTask(Task):
    """Parity of a bit string (no context: use the zero or free init)."""

    name = "parity"
    Options = ParityOptions
    training_defaults = {"epochs": 20, "batch_size": 64, "lr": 3e-3}
    best_metric = "accuracy"
    higher_is_better = True

    def __init__(self, options: ParityOptions) -> None:
        super().__init__(options)
        self._data: dict[str, Batch] = {}

    @property
    def input_size(self) -> int:
        return 1

    def dataset(self, split: str) -> Batch:
        if split not in self._data:
            o = self.options
            size = o.train_size if split == "train" else o.val_size
            g = torch.Generator().manual_seed(o.data_seed + (0 if split == "train" else 1))
            bits = torch.randint(0, 2, (size, o.length), generator=g)
            self._data[split] = {"bits": bits, "target": bits.sum(1) % 2}
        return self._data[split]

    def build_module(self, hidden_size: int) -> ParityModule:
        return ParityModule(hidden_size)

    def loss(self, predictions: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(predictions, batch["target"])

    def metrics(self, predictions: Tensor, batch: Batch) -> dict[str, float]:
        accuracy = (predictions.argmax(1) == batch["target"]).float().mean().item()
        return {"accuracy": accuracy}


@hookimpl
def register_cells(register) -> None:
    register(GRUCell)


@hookimpl
def register_tasks(register) -> None:
    register(ParityTask)
