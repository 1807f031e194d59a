#!/usr/bin/env python
"""FastWeights' two fast-weight updates compared: ``a_update="previous"`` against ``"preliminary"``.

``previous`` (Ba et al. 2016, crnn's default) updates A_t = lam A_{t-1} + eta k k^T with
k = h_{t-1}; ``preliminary`` (the paper authors' code) with k = f(p_t), the current step's
preliminary vector, before the inner loop. The measure is validation accuracy per epoch
(not time), on two tasks, for each seed and each update:

* ``art``: ``crnn run --cell fastweights --init zero --task art --set cell.a_update=U --seed S``
  in a fresh process; the accuracies are read from the run's metrics.jsonl.
* ``keys``: key presence, a task of this script (``KeyPresenceTask``, registered in code and
  trained through ``build_model`` and ``fit``): ``distinct`` distinct tokens, a ``?`` mark and a
  query token; the target is whether the query is among the distinct tokens (half the
  sequences: yes). With the defaults T = 16 (14 tokens, ``?``, query), H = 64, 8,192 training
  and 2,048 validation sequences, each split generated whole from its own seed.

Each (task, update, seed) writes one line to ``OUT/<task>.jsonl``: the options and the
validation accuracy after every epoch; a (task, update, seed) already there is not run again,
so an interrupted call continues where it stopped. The measurements of docs/python-api.md
("Choosing a_update") were made with:

    python benchmarks/a_update_study.py --task art --epochs 10 --seeds 5 --threads 1 --out benchmarks/results/a_update_2026-12-07
    python benchmarks/a_update_study.py --task keys --epochs 30 --threads 1 --out benchmarks/results/a_update_2026-12-07

``--summary`` prints the table of NOTES.md from the JSONL files already in ``--out``:

    python benchmarks/a_update_study.py --summary --out benchmarks/results/a_update_2026-12-07
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from crnn_core import Batch, Task, TaskModule, hookimpl, option
from crnn_core.interfaces.options import check_bounds, require
from crnn_plugins.tasks.art import VAL_SEED_OFFSET  # ART's split seeds: validation = data_seed + this

UPDATES = ("previous", "preliminary")
#: Accuracy thresholds whose first epoch the summary reports.
THRESHOLDS = (0.9, 0.99, 0.995)


@dataclasses.dataclass
class KeyPresenceOptions:
    distinct: int = option(14, "distinct tokens before the query mark (sequence length distinct + 2)", bounds=(1, None))
    vocab: int = option(32, "token values the distinct tokens and the query are drawn from", bounds=(2, None))
    train_size: int = option(8192, "training sequences", bounds=(1, None))
    val_size: int = option(2048, "validation sequences", bounds=(1, None))
    data_seed: int = option(0, "seed of the data (validation: data_seed + 1000003)")
    embedding_size: int = option(32, "token embedding width", bounds=(1, None))

    def __post_init__(self) -> None:
        check_bounds(self)
        require(self.distinct < self.vocab, f"distinct must be below vocab ({self.vocab}), got {self.distinct}")


def generate_key_presence(size: int, distinct: int, vocab: int, seed: int) -> Batch:
    """``size`` sequences ``[x_1 .. x_distinct, ?, q]`` (``?`` is token ``vocab``) and ``target`` (0/1):
    the x distinct values in [0, vocab); q one of them (target 1) or one of the others (target 0),
    uniformly, each with probability 1/2."""
    g = torch.Generator().manual_seed(seed)
    order = torch.rand(size, vocab, generator=g).argsort(dim=1)  # a random permutation per sequence
    present = order[:, :distinct]
    target = torch.randint(0, 2, (size,), generator=g)
    inside = torch.randint(0, distinct, (size, 1), generator=g)
    outside = distinct + torch.randint(0, vocab - distinct, (size, 1), generator=g)
    query = order.gather(1, torch.where(target[:, None] == 1, inside, outside))
    mark = torch.full((size, 1), vocab, dtype=torch.long)
    return {"tokens": torch.cat([present, mark, query], dim=1), "target": target}


class KeyPresenceModule(TaskModule):
    """A token embedding in, a linear two-class head on the last step out."""

    def __init__(self, vocab: int, embedding_size: int, hidden_size: int) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab + 1, embedding_size)
        self.out = nn.Linear(hidden_size, 2)

    def encode(self, batch: Batch) -> Tensor:
        return self.embedding(batch["tokens"])

    def head(self, outputs: Tensor) -> Tensor:
        return self.out(outputs[:, -1])


class KeyPresenceTask(Task):
    """Is the query token (after ``?``) among the distinct tokens before it?"""

    name = "key_presence"
    Options = KeyPresenceOptions
    training_defaults = {"epochs": 30, "batch_size": 128, "lr": 1e-3}
    best_metric = "accuracy"
    higher_is_better = True

    def __init__(self, options: KeyPresenceOptions) -> None:
        super().__init__(options)
        self._data: dict[str, Batch] = {}

    @property
    def input_size(self) -> int:
        return self.options.embedding_size

    def dataset(self, split: str) -> Batch:
        if split not in self._data:
            o = self.options
            size, seed = {"train": (o.train_size, o.data_seed), "val": (o.val_size, o.data_seed + VAL_SEED_OFFSET)}[split]
            self._data[split] = generate_key_presence(size, o.distinct, o.vocab, seed)
        return self._data[split]

    def build_module(self, hidden_size: int) -> KeyPresenceModule:
        return KeyPresenceModule(self.options.vocab, self.options.embedding_size, hidden_size)

    def loss(self, predictions: Tensor, batch: Batch) -> Tensor:
        return F.cross_entropy(predictions, batch["target"])

    def metrics(self, predictions: Tensor, batch: Batch) -> dict[str, float]:
        accuracy = (predictions.argmax(dim=1) == batch["target"]).float().mean().item()
        return {"nll": F.cross_entropy(predictions, batch["target"]).item(), "accuracy": accuracy}


@hookimpl
def register_tasks(register) -> None:
    register(KeyPresenceTask)


def run_keys(update: str, seed: int, epochs: int, hidden: int, task_options: dict[str, Any],
             threads: int | None = None) -> list[float]:
    """Train FastWeights (zero init) on key presence; the validation accuracy after each epoch."""
    from crnn_core import Callback, ModelSpec, TrainConfig, build_model, fit, get_plugins

    plugins = get_plugins()
    if "key_presence" not in plugins.registry("tasks").names():
        plugins.register(types.SimpleNamespace(register_tasks=register_tasks), name="a-update-study")

    class Accuracies(Callback):
        def __init__(self) -> None:
            self.values: list[float] = []

        def on_epoch_end(self, loop, record, improved) -> None:
            self.values.append(record["metrics"]["accuracy"])
            print(f"  keys {update} seed {seed} epoch {len(self.values)}: {self.values[-1]:.4f}", file=sys.stderr,
                  flush=True)

    spec = ModelSpec(cell="fastweights", init="zero", task="key_presence",
                     cell_options={"hidden_size": hidden, "a_update": update}, task_options=task_options)
    config = TrainConfig(epochs=epochs, batch_size=128, lr=1e-3, seed=seed, threads=threads)
    torch.manual_seed(seed)  # the initial weights, as `crnn run --seed` does
    built = build_model(spec, plugins)
    accuracies = Accuracies()
    fit(built.model, built.task, config, callbacks=[accuracies])
    return accuracies.values


def run_art(update: str, seed: int, epochs: int, extra: list[str], threads: int | None = None) -> list[float]:
    """``crnn run`` ART with the zero init in a fresh process; the validation accuracy after each epoch."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        command = [sys.executable, "-m", "crnn_core", "run", "--cell", "fastweights", "--init", "zero", "--task", "art",
                   "--set", f"cell.a_update={update}", "--seed", str(seed), "--epochs", str(epochs),
                   "--out", str(out), "-q", *(["--set", f"train.threads={threads}"] if threads else []), *extra]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["metrics"]["accuracy"] for r in records if r.get("split") == "val"]


def first_epoch(values: list[float], threshold: float) -> int | None:
    """The first epoch (1-based) whose accuracy is at least ``threshold``; None if none is."""
    return next((i + 1 for i, v in enumerate(values) if v >= threshold), None)


def summary_rows(out: Path) -> list[str]:
    """Markdown table rows: per (task, update) the accuracy after the first epoch, the final and the best
    (mean [min, max] over the seeds), and the epoch each seed first reaches each threshold."""
    def spread(xs: list[float]) -> str:
        return f"{statistics.mean(xs):.4f} [{min(xs):.4f}, {max(xs):.4f}]"

    rows = ["| task | a_update | seeds | epochs | val accuracy after epoch 1 | final val accuracy | best val accuracy | "
            + " | ".join(f"epoch to {t:.1%} (per seed)".replace(".0%", "%") for t in THRESHOLDS) + " |",
            "|---|---|---|---|---|---|---|" + "---|" * len(THRESHOLDS)]
    for path in sorted(out.glob("*.jsonl")):
        runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        for update in UPDATES:
            mine = sorted((r for r in runs if r["a_update"] == update), key=lambda r: r["seed"])
            if not mine:
                continue
            epochs = min(len(r["val_accuracy"]) for r in mine)  # runs made with more epochs: their first ones
            curves = [r["val_accuracy"][:epochs] for r in mine]
            reach = [" / ".join(str(first_epoch(c, t) or "never") for c in curves) for t in THRESHOLDS]
            rows.append(f"| {path.stem} | {update} | {', '.join(str(r['seed']) for r in mine)} | {epochs} | "
                        f"{spread([c[0] for c in curves])} | {spread([c[-1] for c in curves])} | {spread([max(c) for c in curves])} | "
                        + " | ".join(reach) + " |")
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--task", choices=("art", "keys"), action="append", help="repeatable (default: both)")
    parser.add_argument("--a-update", choices=UPDATES, action="append", help="repeatable (default: both)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0 .. N-1")
    parser.add_argument("--epochs", type=int, default=None, help="epochs per run (default: art 10, keys 30)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads per run (1 on a crowded machine; accuracy is the measure)")
    parser.add_argument("--hidden", type=int, default=64, help="keys: hidden size H")
    parser.add_argument("--keys-set", action="append", default=[], metavar="KEY=VALUE",
                        help="keys: a KeyPresenceOptions value, e.g. train_size=1024")
    parser.add_argument("--out", type=Path, required=True, help="folder of the <task>.jsonl files")
    parser.add_argument("--summary", action="store_true", help="print the table of the results in --out and exit")
    parser.add_argument("art_args", nargs="*", help="after --: more `crnn run` arguments for ART")
    args = parser.parse_args(argv)
    if args.summary:
        print("\n".join(summary_rows(args.out)))
        return
    args.out.mkdir(parents=True, exist_ok=True)
    keys_options = dict(item.split("=", 1) for item in args.keys_set)
    for task in args.task or ("art", "keys"):
        epochs = args.epochs or {"art": 10, "keys": 30}[task]
        path = args.out / f"{task}.jsonl"
        done = {(r["a_update"], r["seed"]) for r in map(json.loads, path.read_text().splitlines())} if path.exists() else set()
        for seed in range(args.seeds):
            for update in args.a_update or UPDATES:
                if (update, seed) in done:  # measured by an earlier, interrupted call
                    continue
                if task == "art":
                    values = run_art(update, seed, epochs, args.art_args, args.threads)
                    record = {"task": "art", "init": "zero", "extra": args.art_args, "threads": args.threads}
                else:
                    values = run_keys(update, seed, epochs, args.hidden, keys_options, args.threads)
                    record = {"task": "key_presence", "init": "zero", "hidden_size": args.hidden,
                              "task_options": keys_options, "threads": args.threads}
                record.update(a_update=update, seed=seed, epochs=epochs, val_accuracy=values)
                with path.open("a") as f:
                    f.write(json.dumps(record) + "\n")
                print(f"{task} {update} seed {seed}: " + " ".join(f"{v:.4f}" for v in values), flush=True)


if __name__ == "__main__":
    main()
