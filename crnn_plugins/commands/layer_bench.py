"""``crnn bench --layer``: the ``FastWeights`` layer (fused backend) as a drop-in for ``nn.LSTM``.

At each shape (B, T, H; default ``LAYER_SHAPES``) it times, forward+backward, in one process:

* ``no_lengths``      -- ``FastWeights(H, H)`` on ``[B, T, H]`` without ``lengths``;
* ``equal_lengths``   -- the same with ``lengths`` all equal to T (should cost what no lengths costs);
* ``random_lengths``  -- the same with ``lengths`` drawn uniformly in [ceil(T/2), T] (seeded);
* ``bidirectional``   -- ``FastWeights(H, H, bidirectional=True)``;
* ``two_unidirectional`` -- two unidirectional layers run one after the other on the same input
  (the work a bidirectional layer does, as two separate calls);
* ``lstm``            -- ``nn.LSTM(H, H, batch_first=True)``, the same hidden size.

Forward+backward: the outputs' gradient from a fixed random upstream gradient, with respect to
the layer's parameters (the input needs none), as in a training step. Every case of a shape
runs its warm-up calls first; then the repeats are interleaved: each round times every case
once, the order rotating round by round, so that a slow phase of a shared machine falls on
every case alike. Reported per case: the median, quartiles and the interquartile range over the
median; ratios (``RATIOS``) are a median over a median.
"""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable

import torch
from torch import Tensor, nn

from crnn_core.base.errors import ConfigError

from .timing import load_avg, machine_info, spread

#: The default shapes (B, T, H): the ART shape and two long-sequence ones (about a minute in all).
LAYER_SHAPES = ((128, 11, 50), (32, 128, 128), (32, 512, 128))
CASES = ("no_lengths", "equal_lengths", "random_lengths", "bidirectional", "two_unidirectional", "lstm")
#: Ratio name -> (numerator case, denominator case, its column in the table).
RATIOS = {
    "equal_over_no_lengths": ("equal_lengths", "no_lengths", "equal/none"),
    "random_over_no_lengths": ("random_lengths", "no_lengths", "random/none"),
    "bidirectional_over_two_unidirectional": ("bidirectional", "two_unidirectional", "bi/2 uni"),
    "fastweights_over_lstm": ("no_lengths", "lstm", "fw/lstm"),
}
#: Each case's column in the table.
CASE_COLUMNS = {"no_lengths": "none", "equal_lengths": "equal", "random_lengths": "random",
                "bidirectional": "bi", "two_unidirectional": "2 uni", "lstm": "lstm"}


def parse_shape(text: str) -> tuple[int, int, int]:
    """``"B,T,H"`` (or ``BxTxH``) as three positive ints; a one-line ValueError otherwise."""
    parts = text.replace("x", ",").split(",")
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"a layer shape must be three positive ints B,T,H, got {text!r}")
    return shape  # type: ignore[return-value]


def _fused_layer(hidden: int, device: torch.device, bidirectional: bool = False) -> nn.Module:
    from crnn_plugins.fast_weights.layer import FastWeights

    layer = FastWeights(hidden, hidden, bidirectional=bidirectional, backend="fused", device=device)
    try:
        layer.backend_for(device)
    except RuntimeError as error:
        raise ConfigError(f"crnn bench --layer times the fused backend: {error}") from None
    return layer


def _forward_backward(run: Callable[[], Tensor], params: list[Tensor], upstream: Tensor) -> Callable[[], None]:
    """One timed call: ``run()``'s outputs, then their gradient with respect to ``params``."""

    def call() -> None:
        torch.autograd.grad(run(), params, upstream)

    return call


def build_cases(batch: int, steps: int, hidden: int, device: torch.device, seed: int) -> tuple[dict[str, Callable[[], None]], list[int]]:
    """The ``CASES`` at one shape as zero-argument calls, and the random lengths they use."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, steps, hidden, generator=generator).to(device)
    low = math.ceil(steps / 2)
    random_lengths = torch.randint(low, steps + 1, (batch,), generator=generator)
    equal = torch.full((batch,), steps, dtype=torch.int64, device=device)
    upstream = torch.randn(batch, steps, hidden, generator=generator).to(device)
    upstream2 = torch.cat([upstream, torch.randn(batch, steps, hidden, generator=generator).to(device)], dim=-1)
    torch.manual_seed(seed)
    uni, bi = _fused_layer(hidden, device), _fused_layer(hidden, device, bidirectional=True)
    first, second = _fused_layer(hidden, device), _fused_layer(hidden, device)
    lstm = nn.LSTM(hidden, hidden, batch_first=True, device=device)
    lengths = random_lengths.to(device)

    def two_unidirectional() -> Tensor:
        return torch.cat([first(x, final_state=False)[0], second(x, final_state=False)[0]], dim=-1)

    cases = {
        "no_lengths": _forward_backward(lambda: uni(x, final_state=False)[0], list(uni.parameters()), upstream),
        "equal_lengths": _forward_backward(lambda: uni(x, lengths=equal, final_state=False)[0],
                                           list(uni.parameters()), upstream),
        "random_lengths": _forward_backward(lambda: uni(x, lengths=lengths, final_state=False)[0],
                                            list(uni.parameters()), upstream),
        "bidirectional": _forward_backward(lambda: bi(x, final_state=False)[0], list(bi.parameters()), upstream2),
        "two_unidirectional": _forward_backward(two_unidirectional, [*first.parameters(), *second.parameters()],
                                                upstream2),
        "lstm": _forward_backward(lambda: lstm(x)[0], list(lstm.parameters()), upstream),
    }
    return cases, random_lengths.tolist()


def time_interleaved(cases: dict[str, Callable[[], None]], repeats: int, warmup: int,
                     clock: Callable[[], float] = time.perf_counter, sync: Callable[[], None] = lambda: None
                     ) -> dict[str, list[float]]:
    """Milliseconds per call of each case: ``warmup`` untimed calls each, then ``repeats`` rounds
    that time every case once, the order rotated by one case per round."""
    names = list(cases)
    for name in names:
        for _ in range(warmup):
            cases[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(repeats):
        for name in names[round_ % len(names):] + names[:round_ % len(names)]:
            sync()
            start = clock()
            cases[name]()
            sync()
            samples[name].append((clock() - start) * 1e3)
    return samples


def shape_record(batch: int, steps: int, hidden: int, samples: dict[str, list[float]]) -> dict[str, Any]:
    """One shape's row: each case's median and spread, and the ``RATIOS`` of their medians."""
    cases = {name: {"median_ms": round(statistics.median(s), 4), "min_ms": round(min(s), 4),
                    "max_ms": round(max(s), 4), **spread(s)} for name, s in samples.items()}
    ratios = {name: round(statistics.median(samples[a]) / statistics.median(samples[b]), 3)
              for name, (a, b, _) in RATIOS.items() if a in samples and b in samples}
    return {"batch": batch, "length": steps, "hidden": hidden, "cases": cases, "ratios": ratios}


def run_layer_benchmark(shapes: tuple[tuple[int, int, int], ...] = LAYER_SHAPES, *, repeats: int = 10,
                        warmup: int = 2, device: str = "cpu", seed: int = 0,
                        progress: Callable[[str], None] = lambda msg: None) -> dict[str, Any]:
    """Time the ``CASES`` at each shape; one JSON-ready document (settings, machine, a record per shape)."""
    from crnn_core.training.distributed import resolve_device

    dev = resolve_device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    load_before = load_avg()
    records = []
    for n, (batch, steps, hidden) in enumerate(shapes, 1):
        progress(f"[{n}/{len(shapes)}] B={batch} T={steps} H={hidden}")
        cases, random_lengths = build_cases(batch, steps, hidden, dev, seed)
        record = shape_record(batch, steps, hidden, time_interleaved(cases, repeats, warmup, sync=sync))
        record["random_lengths"] = {"low": min(random_lengths), "high": max(random_lengths),
                                    "mean": round(statistics.mean(random_lengths), 2)}
        records.append(record)
    machine = machine_info(dev)
    machine["load_avg_1m_before"], machine["load_avg_1m_after"] = load_before, load_avg()
    return {"settings": {"device": str(dev), "repeats": repeats, "warmup": warmup, "seed": seed,
                         "threads": torch.get_num_threads(), "mode": "forward+backward", "cases": list(CASES)},
            "machine": machine, "records": records}


def format_layer_table(doc: dict[str, Any]) -> str:
    """Median ms per case (the IQR over the median in brackets) and the ratios, one row per shape."""
    header = ["B", "T", "H", *CASE_COLUMNS.values(), *(column for _, _, column in RATIOS.values())]
    rows = [header]
    for r in doc["records"]:
        cells = [f"{r['cases'][c]['median_ms']:.2f} ({100 * r['cases'][c]['iqr_rel']:.0f}%)" for c in CASES]
        rows.append([str(r["batch"]), str(r["length"]), str(r["hidden"]), *cells,
                     *(f"{r['ratios'][k]:.2f}" for k in RATIOS)])
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(row, widths)) for row in rows]
    s = doc["settings"]
    lines.append(f"FastWeights (fused) forward+backward ms, median of {s['repeats']} interleaved repeats "
                 f"(IQR / median), {s['threads']} thread{'s' if s['threads'] != 1 else ''}, {s['device']}. none / equal / random: no lengths, all T, "
                 "uniform in [T/2, T]; bi: bidirectional; 2 uni: two unidirectional layers; lstm: nn.LSTM, same H")
    return "\n".join(lines)
