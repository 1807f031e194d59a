"""The `art` task: associative retrieval (Ba et al. 2016), as used by Wenke & Fleming (2019).

A sequence is ``pairs`` letter-digit pairs (distinct letters, digits with
replacement), then ``??``, then a query letter from the keys, e.g. ``c9k8j3f1??k``;
the target is the query's digit. Tokens: ``a``-``z`` = 0-25, ``0``-``9`` = 26-35,
``?`` = 36. Each split is generated whole, vectorised, from its own seed.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crnn_core import Batch, Task, TaskModule, hookimpl, option
from crnn_core.options import check_bounds
from crnn_core.resources import FLOAT32, INT64, check_memory

VOCAB = [chr(ord("a") + i) for i in range(26)] + [str(d) for d in range(10)] + ["?"]
QUERY_MARK = 36
#: Offset between the train and validation generator seeds (same data_seed, disjoint streams).
VAL_SEED_OFFSET = 1_000_003


@dataclasses.dataclass
class ARTOptions:
    pairs: int = option(4, "letter-digit pairs per sequence (sequence length 2*pairs+3)", bounds=(1, 26))
    train_size: int = option(100_000, "training sequences (checked against memory)", bounds=(1, None))
    val_size: int = option(20_000, "validation sequences (checked against memory)", bounds=(1, None))
    data_seed: int = option(0, "seed of the data (train uses it, validation uses it + 1000003)")
    embedding_size: int = option(100, "character embedding width", bounds=(1, None))
    head_hidden: int = option(100, "width of the ReLU layer of the output head", bounds=(1, None))

    def __post_init__(self) -> None:
        check_bounds(self)


def art_bytes(size: int, pairs: int) -> int:
    """Peak bytes of ``generate_art(size, pairs, ...)``: the int64 tokens and target, and the
    per-example random keys and their sort order (26 letters) drawn on the way."""
    return size * ((2 * pairs + 4) * INT64 + 26 * (FLOAT32 + INT64))


def generate_art(size: int, pairs: int, seed: int) -> Batch:
    """``size`` ART sequences: ``tokens [N, 2*pairs+3]`` (int64) and ``target [N]`` (a token id)."""
    g = torch.Generator().manual_seed(seed)
    keys = torch.rand(size, 26, generator=g).argsort(dim=1)[:, :pairs]  # distinct letters
    digits = torch.randint(26, 36, (size, pairs), generator=g)
    which = torch.randint(0, pairs, (size,), generator=g)
    query = keys.gather(1, which[:, None])
    target = digits.gather(1, which[:, None]).squeeze(1)
    body = torch.stack([keys, digits], dim=2).reshape(size, 2 * pairs)
    marks = torch.full((size, 2), QUERY_MARK, dtype=torch.long)
    tokens = torch.cat([body, marks, query], dim=1)
    return {"tokens": tokens, "target": target}


def decode(tokens: Tensor) -> str:
    """Token ids to text, e.g. ``c9k8j3f1??k``."""
    return "".join(VOCAB[int(t)] for t in tokens)


class ARTModule(TaskModule):
    """Shared character embedding, first-token context, and the MLP head on the last step."""

    def __init__(self, embedding_size: int, hidden_size: int, head_hidden: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(len(VOCAB), embedding_size)
        self.out = nn.Sequential(
            nn.Linear(hidden_size, head_hidden), nn.ReLU(), nn.Linear(head_hidden, len(VOCAB))
        )

    def encode(self, batch: Batch) -> Tensor:
        return self.embedding(batch["tokens"])

    def context(self, batch: Batch) -> Tensor:
        return self.embedding(batch["tokens"][:, 0])

    def head(self, outputs: Tensor) -> Tensor:
        return self.out(outputs[:, -1])


class ARTTask(Task):
    """Associative retrieval: recall the digit paired with the query letter (e.g. c9k8j3f1??k -> 8)."""

    name = "art"
    Options = ARTOptions
    training_defaults = {"epochs": 200, "batch_size": 128, "lr": 1e-3}
    best_metric = "accuracy"
    higher_is_better = True
    early_stop_target = ("accuracy", 1.0)

    def __init__(self, options: ARTOptions) -> None:
        super().__init__(options)
        self._data: dict[str, Batch] = {}
        check_memory(art_bytes(options.train_size + options.val_size, options.pairs), "the ART data",
                     "task.train_size / task.val_size")

    @property
    def input_size(self) -> int:
        return self.options.embedding_size

    @property
    def context_size(self) -> int:
        return self.options.embedding_size

    def dataset(self, split: str) -> Batch:
        if split not in self._data:
            o = self.options
            size, seed = {"train": (o.train_size, o.data_seed), "val": (o.val_size, o.data_seed + VAL_SEED_OFFSET)}[split]
            self._data[split] = generate_art(size, o.pairs, seed)
        return self._data[split]

    def build_module(self, hidden_size: int) -> ARTModule:
        o = self.options
        return ARTModule(o.embedding_size, hidden_size, o.head_hidden)

    def loss(self, predictions: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(predictions, batch["target"])

    def metrics(self, predictions: Tensor, batch: Batch) -> dict[str, float]:
        nll = F.cross_entropy(predictions, batch["target"]).item()
        accuracy = (predictions.argmax(dim=1) == batch["target"]).float().mean().item()
        return {"nll": nll, "accuracy": accuracy}


@hookimpl
def register_tasks(register) -> None:
    register(ARTTask)
