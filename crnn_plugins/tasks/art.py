"""The `art` task: associative retrieval (Ba et al. 2016), as used by Wenke & Fleming (2019).

A sequence is ``pairs`` letter-digit pairs (distinct letters, digits with
replacement), then ``??``, then a query letter from the keys, e.g. ``c9k8j3f1??k``;
the target is the query's digit. Tokens: ``a``-``z`` = 0-25, ``0``-``9`` = 26-35,
``?`` = 36. Each split is generated whole, vectorised, from its own seed.

Options reproduce the paper authors' code (fomorians/contextual_rnn ``train_art.py``)
where it differs from crnn's defaults: ``key_letters=25`` (their generator never uses
'z' as a key), ``embedding_init=zeros`` and ``head_init=variance_scaling`` (TF's
``variance_scaling(scale=2.0)``: truncated normal, fan-in, zero biases).
``resample_train`` draws a fresh training set every epoch from (data_seed, epoch).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crnn_core import Batch, Task, TaskModule, hookimpl, option
from crnn_core.interfaces.options import check_bounds, require
from crnn_core.base.resources import FLOAT32, INT64, check_memory, check_parameters

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
    key_letters: int = option(26, "letters that can be keys, a.. (the authors' generator: 25, never 'z')", bounds=(1, 26))
    resample_train: bool = option(False, "draw a fresh training set every epoch from (data_seed, epoch)")
    embedding_init: Literal["normal", "zeros"] = option("normal", "embedding init: N(0, 1) (PyTorch) or zeros (the authors)")
    head_init: Literal["default", "variance_scaling"] = option(
        "default", "head init: PyTorch's Linear default or variance scaling 2.0 with zero bias (the authors)")

    def __post_init__(self) -> None:
        check_bounds(self)
        require(self.pairs <= self.key_letters, f"pairs must be in 1..key_letters ({self.key_letters}), got {self.pairs}")


def art_bytes(size: int, pairs: int) -> int:
    """Peak bytes of ``generate_art(size, pairs, ...)``: the int64 tokens and target, and the
    per-example random keys and their sort order (26 letters) drawn on the way."""
    return size * ((2 * pairs + 4) * INT64 + 26 * (FLOAT32 + INT64))


def generate_art(size: int, pairs: int, seed: int, key_letters: int = 26) -> Batch:
    """``size`` ART sequences: ``tokens [N, 2*pairs+3]`` (int64) and ``target [N]`` (a token id).

    Keys are distinct letters among the first ``key_letters`` (26: a-z).
    """
    g = torch.Generator().manual_seed(seed)
    keys = torch.rand(size, key_letters, generator=g).argsort(dim=1)[:, :pairs]  # distinct letters
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


#: Standard deviation of N(0, 1) truncated to [-2, 2]: TF's variance_scaling divides by it.
TRUNCATED_STD = 0.87962566103423978


def variance_scaling_(weight: Tensor, scale: float) -> None:
    """TF's ``variance_scaling(scale)`` (fan-in, truncated normal) for a Linear ``[out, in]`` weight, in place."""
    std = math.sqrt(scale / weight.shape[1]) / TRUNCATED_STD
    nn.init.trunc_normal_(weight, std=std, a=-2 * std, b=2 * std)


class ARTModule(TaskModule):
    """Shared character embedding, first-token context, and the MLP head on the last step."""

    def __init__(self, embedding_size: int, hidden_size: int, head_hidden: int,
                 embedding_init: str = "normal", head_init: str = "default") -> None:
        super().__init__()
        self.embedding = nn.Embedding(len(VOCAB), embedding_size)
        self.out = nn.Sequential(
            nn.Linear(hidden_size, head_hidden), nn.ReLU(), nn.Linear(head_hidden, len(VOCAB))
        )
        with torch.no_grad():
            if embedding_init == "zeros":
                self.embedding.weight.zero_()
            if head_init == "variance_scaling":
                for layer in (self.out[0], self.out[2]):
                    variance_scaling_(layer.weight, 2.0)
                    layer.bias.zero_()

    def encode(self, batch: Batch) -> Tensor:
        return self.embedding(batch["tokens"])

    def context(self, batch: Batch) -> Tensor:
        return self.embedding(batch["tokens"][:, 0])

    def context_rows(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """The embedding table and the first tokens: ``context(batch)`` is ``table[index]``."""
        return self.embedding.weight, batch["tokens"][:, 0]

    def encode_projected(self, batch: Batch, projection: nn.Linear) -> Tensor:
        """The projected table looked up: 37 rows through ``projection`` instead of B x T (``index_select``:
        its backward is an ``index_add``, cheaper on the CPU than ``F.embedding``'s)."""
        tokens = batch["tokens"]
        return projection(self.embedding.weight).index_select(0, tokens.reshape(-1)).view(*tokens.shape, -1)

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
            self._data[split] = generate_art(size, o.pairs, seed, o.key_letters)
        return self._data[split]

    def epoch_train_data(self, epoch: int) -> Batch | None:
        """With ``resample_train``: epoch 0 trains on ``dataset("train")``, epoch e > 0 on a set
        drawn from seed ``data_seed + 2 * 1000003 * e`` (never the validation seed)."""
        o = self.options
        if not o.resample_train or epoch == 0:
            return None
        return generate_art(o.train_size, o.pairs, o.data_seed + 2 * VAL_SEED_OFFSET * epoch, o.key_letters)

    def build_module(self, hidden_size: int) -> ARTModule:
        o = self.options
        check_parameters(len(VOCAB) * o.embedding_size + (hidden_size + 1) * o.head_hidden + (o.head_hidden + 1) * len(VOCAB),
                         "the ART embedding and head", "task.head_hidden / task.embedding_size")
        return ARTModule(o.embedding_size, hidden_size, o.head_hidden, o.embedding_init, o.head_init)

    def loss(self, predictions: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(predictions, batch["target"])

    def metrics(self, predictions: Tensor, batch: Batch) -> dict[str, float]:
        nll = F.cross_entropy(predictions, batch["target"]).item()
        accuracy = (predictions.argmax(dim=1) == batch["target"]).float().mean().item()
        return {"nll": nll, "accuracy": accuracy}


@hookimpl
def register_tasks(register) -> None:
    register(ARTTask)
