"""``crnn bench`` and ``crnn kernels``: the fused fast-weights kernel against the pure-PyTorch fallbacks.

Both are declared by name in the ``crnn.cli`` entry-point group (pyproject.toml), so
``crnn --help`` lists them without importing this module.

``crnn bench`` times the three fast-weights backends on the same inputs, in the same
process: per grid point and mode each backend runs its warm-up calls and then its timed
repeats back to back (the steady state of a training loop), the backends' order
rotating from point to point:

* ``fused``     -- the C++/CUDA op (``crnn_plugins.fast_weights.fused``),
* ``compiled``  -- ``torch.compile`` of the reference (the strongest pure-PyTorch
  alternative): compiled afresh for every grid point and mode (``torch._dynamo.reset()``,
  ``dynamic=False``), so its first call's time is the compile time of that shape,
  reported apart (``compile_s``) and not in the steady-state figures;
* ``reference`` -- the pure-PyTorch attention-form unroll (the fallback backend),
* ``naive``     -- the loop that materialises A_t every step (public implementations).

Spread: every record has the minimum, maximum and quartiles of its repeats; a row whose
interquartile range exceeds ``SPREAD_WARN`` of its median is marked ``!`` in the table
and listed under ``warnings`` in the JSON (too noisy to trust: rerun on a quieter
machine). The 1-minute load average before and after the run is in ``machine``.

Modes: ``forward`` (under ``torch.no_grad()``, i.e. inference) and ``forward+backward``
(outputs' gradient from a fixed random upstream gradient, A_T not in the loss, as in
training on ART). Inputs: xp ~ N(0,1), h0 ~ 0.5 N(0,1), A0 ~ 0.1 N(0,1) (a learned
initial state; ``--state zero`` for zeros; ``--state art`` for h0 = 0, ``A0=None`` and
``final_state=False`` in every backend: the op as an ART training step with the zero init
calls it, no A_0 read and no A_T formed; ``--state art-learned``: the random h0 and A0,
``final_state=False``, as the learned init's step calls it; ``--state art-free``: one
random ``[H, H]`` A0 for the batch, ``final_state=False``, as the free init's step calls
the fused op, the other backends getting it tiled), W = 0.05 I + 0.1 N(0,1)/sqrt(H),
gamma = 1, beta = 0, lam = 0.95, eta = 0.5, ReLU.

Memory (``peak_memory_bytes``): on CUDA, ``torch.cuda.max_memory_allocated`` during the
call minus what was allocated before it. On CPU, where PyTorch has no allocator
statistics, the bytes alive between forward and backward: the outputs plus every
distinct tensor autograd saved for the backward, other than the inputs themselves
(counted with ``torch.autograd.graph.saved_tensors_hooks``); for ``forward`` mode, the
outputs only. ``memory_method`` in each record says which.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import signal
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any, Callable

import click
import torch

from crnn_core.training.distributed import resolve_device
from crnn_core.base.errors import ConfigError
from crnn_core.base.resources import check_memory

from .timing import load_avg, machine_info, spread

#: ``crnn bench`` without grid options: one ART-sized point (about a minute, most of it
#: torch.compile compiling the point's two modes).
DEFAULT_BATCH = (128,)
DEFAULT_LENGTH = (11,)
DEFAULT_HIDDEN = (50,)
DEFAULT_INNER = (1,)
#: ``crnn bench --full``: the grid of docs/benchmarks.md's first table (minutes).
FULL_BATCH = (1, 128)
FULL_LENGTH = (11, 25)
FULL_HIDDEN = (50, 128)
BACKENDS = ("fused", "compiled", "reference", "naive")
SPREAD_WARN = 0.2  # IQR / median above which a timing is flagged
#: Most calls ``--repeats`` and ``--warmup`` may ask for (each, per backend and point): more adds
#: nothing to a median, and a typo such as 2**63 ran for ever.
MAX_CALLS = 10**6
# wall: elapsed time. cpu: the calling thread's CPU time (one thread only), which other
# processes on a shared machine disturb much less than the elapsed time.
CLOCKS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "cpu": time.thread_time}
MODES = ("forward", "forward+backward")
LAM, ETA = 0.95, 0.5


def _backend_fns(device: torch.device) -> tuple[dict[str, Callable], dict[str, str]]:
    """The backends that can run on ``device``, and a note on each (for fused: how it loaded, or why not)."""
    from ..fast_weights import fused as fastweights_fused
    from ..fast_weights.reference import fastweights_naive, fastweights_reference

    fns: dict[str, Callable] = {"reference": fastweights_reference, "naive": fastweights_naive,
                                "compiled": _compiled_reference}
    notes = {"reference": "pure PyTorch, attention form", "naive": "pure PyTorch, explicit A_t each step",
             "compiled": "torch.compile(reference, dynamic=False), compiled afresh per shape and mode"}
    ok, reason = fastweights_fused.device_status(device)
    notes["fused"] = reason
    if ok:
        fns["fused"] = fastweights_fused.fastweights_fused
    return fns, notes


def _compiled_reference() -> Callable:
    """A fresh ``torch.compile`` of the reference: dynamo's caches are reset, so the next call compiles."""
    from crnn_plugins.fast_weights.reference import fastweights_reference

    torch._dynamo.reset()
    return torch.compile(fastweights_reference, dynamic=False)


#: ``--state`` values: the initial state the op is timed with (module docstring).
STATES = ("random", "zero", "art", "art-learned", "art-free")


def wants_final_state(state: str) -> bool:
    """Whether the timed calls form A_T: not for the ``art*`` states (a training step's call)."""
    return not state.startswith("art")


def bench_inputs(B: int, T: int, H: int, device: torch.device | str, dtype: torch.dtype, state: str = "random",
                 seed: int = 0) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The op's inputs ``[xp, h0, A0, W, gamma, beta]`` and an upstream gradient of the outputs,
    as the module docstring describes (``state="zero"``: h0 = 0 and A0 = 0; ``"art"``: h0 = 0, A0 None;
    ``"art-free"``: A0 one ``[H, H]`` matrix)."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=dtype)

    xp = r(B, T, H)
    h0 = 0.5 * r(B, H)
    A0 = 0.1 * r(B, H, H)
    if state in ("zero", "art"):
        h0.zero_()
        A0.zero_()
    A0_arg: torch.Tensor | None = {"art": None, "art-free": A0[0]}.get(state, A0)
    W = 0.05 * torch.eye(H, dtype=dtype) + 0.1 * r(H, H) / H**0.5
    gamma = torch.ones(H, dtype=dtype)
    beta = torch.zeros(H, dtype=dtype)
    upstream = r(B, T, H)
    return [None if t is None else t.to(device) for t in (xp, h0, A0_arg, W, gamma, beta)], upstream.to(device)


def _storage_key(t: torch.Tensor) -> tuple[int, int]:
    return (t.untyped_storage().data_ptr(), t.untyped_storage().nbytes())


class _Timer:
    """Times one call of one backend in one mode; measures its memory once."""

    def __init__(self, fn: Callable, args: list[torch.Tensor | None], upstream: torch.Tensor, mode: str, S: int,
                 device: torch.device, final_state: bool = True):
        from ..fast_weights.layer import a0_for

        if fn is _compiled_reference:
            fn = _compiled_reference()
        self.fn, self.mode, self.S, self.device, self.final_state = fn, mode, S, device, final_state
        self.a0_for = functools.partial(a0_for, fn)  # A0 as this backend takes it ([H, H] tiled but for fused)
        self.clock: Callable[[], float] = time.perf_counter
        self.upstream = upstream
        if mode == "forward":
            self.args = args
        else:
            self.args = [None if a is None else a.detach().clone().requires_grad_(True) for a in args]
        self.tensors = [a for a in self.args if a is not None]

    def _run(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        xp, h0, A0, *rest = self.args
        return self.fn(xp, h0, self.a0_for(A0, xp.shape[0]), *rest, LAM, ETA, self.S, "relu",
                       final_state=self.final_state)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _call(self) -> None:
        if self.mode == "forward":
            with torch.no_grad():
                self._run()
        else:
            out, _ = self._run()
            torch.autograd.backward(out, self.upstream)

    def time_once(self) -> float:
        for a in self.tensors:
            a.grad = None
        self._sync()
        start = self.clock()
        self._call()
        self._sync()
        return (self.clock() - start) * 1e3

    def memory(self) -> tuple[int | None, str]:
        for a in self.tensors:
            a.grad = None
        if self.device.type == "cuda":
            self._sync()
            before = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._call()
            self._sync()
            return torch.cuda.max_memory_allocated(self.device) - before, "cuda_max_memory_allocated"
        inputs = {_storage_key(a) for a in self.tensors}
        saved: dict[tuple[int, int], int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            key = _storage_key(t)
            if key not in inputs:
                saved[key] = t.untyped_storage().nbytes()
            return t

        if self.mode == "forward":
            with torch.no_grad():
                out, A = self._run()
            return out.nbytes + (0 if A is None else A.nbytes), "cpu_outputs"
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out, A = self._run()
        for t in (out, A):
            if t is not None:
                saved.setdefault(_storage_key(t), t.untyped_storage().nbytes())
        torch.autograd.backward(out, self.upstream)
        return sum(saved.values()), "cpu_saved_for_backward_plus_outputs"


def summarize(ratios: list[dict[str, Any]]) -> dict[str, Any]:
    """Per mode: the median (and range) over the grid of each backend's time over fused's."""
    out: dict[str, Any] = {}
    for mode in MODES:
        rows = [r for r in ratios if r["mode"] == mode]
        for key in sorted({k for r in rows for k in r if k.endswith("_over_fused")}):
            vals = [r[key] for r in rows if r.get(key)]
            if vals:
                out.setdefault(mode, {})[key] = {"median": round(statistics.median(vals), 3), "min": min(vals),
                                                 "max": max(vals), "points": len(vals)}
    return out


def length_growth(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Measured growth with T: for each backend, mode, B, H, S timed at several lengths, the exponent
    k in time ~ T^k and memory ~ T^k between the shortest and the longest length (1: linear)."""
    import math

    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in records:
        if r.get("median_ms") is None:
            continue
        groups.setdefault((r["backend"], r["mode"], r["batch"], r["hidden"], r["inner_steps"]), []).append(r)
    out = []
    for (backend, mode, B, H, S), rs in groups.items():
        rs = sorted(rs, key=lambda r: r["length"])
        if len(rs) < 2 or rs[0]["length"] == rs[-1]["length"]:
            continue
        a, b = rs[0], rs[-1]
        lt = math.log(b["length"] / a["length"])
        row = {"backend": backend, "mode": mode, "batch": B, "hidden": H, "inner_steps": S,
               "lengths": [a["length"], b["length"]], "time_exponent": round(math.log(b["median_ms"] / a["median_ms"]) / lt, 2)}
        if a.get("peak_memory_bytes") and b.get("peak_memory_bytes"):
            row["memory_exponent"] = round(math.log(b["peak_memory_bytes"] / a["peak_memory_bytes"]) / lt, 2)
        out.append(row)
    return out


@dataclass(frozen=True)
class GridPoint:
    """One shape of the benchmark grid."""

    batch: int
    length: int
    hidden: int
    inner_steps: int

    def fields(self) -> dict[str, int]:
        """The shape as it appears in every record and ratio of the JSON document."""
        return {"batch": self.batch, "length": self.length, "hidden": self.hidden, "inner_steps": self.inner_steps}


def _skipped_backends(active: list[str], mode: str, point: GridPoint, torch_dtype: torch.dtype,
                      max_naive_bytes: float, max_compiled_length: int | None) -> dict[str, str]:
    """The backends not timed at ``point`` in ``mode``, and why (too much memory, too long to compile)."""
    B, T, H, S = point.batch, point.length, point.hidden, point.inner_steps
    skipped: dict[str, str] = {}
    naive_bytes = B * T * (S + 1) * H * H * torch.finfo(torch_dtype).bits // 8
    if "naive" in active and mode == "forward+backward" and naive_bytes > max_naive_bytes:
        # it would keep an H x H matrix per example, step and inner step
        skipped["naive"] = f"would save ~{naive_bytes / 1e9:.1f} GB for the backward (> --max-naive-gb)"
    if "compiled" in active and max_compiled_length is not None and T > max_compiled_length:
        # dynamo unrolls the T-step loop: compile time grows with T
        skipped["compiled"] = (f"T={T} > --max-compiled-length {max_compiled_length} (torch.compile "
                               "unrolls the T-step loop; compile time grows with T)")
    return skipped


def _time_backends(timers: dict[str, "_Timer"], order: list[str], warmup: int,
                   repeats: int) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Each backend's warm-up and then its repeats back to back (steady state, as in a training loop),
    in ``order``; returns the samples (ms) and the compile time (s) of ``compiled``'s first call."""
    samples: dict[str, list[float]] = {}
    compile_s: dict[str, float] = {}
    for b in order:
        timer = timers[b]
        if b == "compiled":  # the first call compiles this shape: timed apart
            compile_s[b] = timer.time_once() / 1e3
        for _ in range(warmup):
            timer.time_once()
        samples[b] = [timer.time_once() for _ in range(repeats)]
    return samples, compile_s


def _backend_record(backend: str, mode: str, point: GridPoint, device: torch.device, dtype: str, samples: list[float],
                    repeats: int, compile_s: float | None, memory: tuple[int | None, str],
                    fused_median: float | None) -> dict[str, Any]:
    """One timed backend at one grid point, as a record of the JSON document."""
    median = statistics.median(samples)
    return {
        "backend": backend, "mode": mode, **point.fields(), "device": str(device), "dtype": dtype,
        "median_ms": round(median, 4), "min_ms": round(min(samples), 4), "max_ms": round(max(samples), 4),
        **spread(samples),
        "repeats": repeats,
        **({"compile_s": round(compile_s, 3)} if compile_s is not None else {}),
        "peak_memory_bytes": memory[0],
        "memory_method": memory[1],
        "ratio_to_fused": round(median / fused_median, 3) if fused_median is not None else None,
    }


def _check_bench_settings(dev: torch.device, clock: str, points: list[GridPoint], torch_dtype: torch.dtype) -> None:
    """Refuse a clock the device cannot use, and a grid point that would not fit in memory (nothing runs)."""
    if clock not in CLOCKS:
        raise ConfigError(f"clock must be one of {', '.join(CLOCKS)}, got {clock!r}")
    if clock == "cpu" and (dev.type != "cpu" or torch.get_num_threads() != 1):
        raise ConfigError("--clock cpu measures the calling thread's CPU time: it needs --device cpu and --threads 1")
    itemsize = torch.finfo(torch_dtype).bits // 8
    for p in points:
        B, T, H, S = p.batch, p.length, p.hidden, p.inner_steps
        check_memory(itemsize * (4 * B * H * H + B * T * H * (4 + 2 * S) + 2 * H * H),
                     f"the bench point B={B} T={T} H={H} S={S}", "--batch / --length / --hidden / --inner-steps")


def _time_point(point: GridPoint, n: int, total: int, active: list[str], fns: dict[str, Callable],
                modes: tuple[str, ...], dev: torch.device, torch_dtype: torch.dtype, dtype: str, state: str, seed: int,
                warmup: int, repeats: int, max_naive_bytes: float, max_compiled_length: int | None, clock: str,
                progress: Callable[[str], None], records: list[dict[str, Any]], ratios: list[dict[str, Any]]) -> None:
    """Time every backend in every mode at the ``n``-th of ``total`` grid points; appends to ``records``
    and ``ratios`` as each mode is done (so an interruption keeps what was measured)."""
    args, upstream = bench_inputs(point.batch, point.length, point.hidden, dev, torch_dtype, state, seed)
    for mode in modes:
        progress(f"[{n}/{total}] B={point.batch} T={point.length} H={point.hidden} S={point.inner_steps} {mode}")
        skipped = _skipped_backends(active, mode, point, torch_dtype, max_naive_bytes, max_compiled_length)
        for b, why in skipped.items():
            progress(f"  {b} skipped: {why}")
        here = [b for b in active if b not in skipped]
        timers = {b: _Timer(fns[b], args, upstream, mode, point.inner_steps, dev, final_state=wants_final_state(state))
                  for b in here}
        for timer in timers.values():
            timer.clock = CLOCKS[clock]
        order = here[n % len(here):] + here[: n % len(here)]  # rotates from one grid point to the next
        samples, compile_s = _time_backends(timers, order, warmup, repeats)
        medians = {b: statistics.median(v) for b, v in samples.items()}
        for b, why in skipped.items():
            records.append({"backend": b, "mode": mode, **point.fields(), "device": str(dev), "dtype": dtype,
                            "median_ms": None, "skipped": why})
        for b in here:
            records.append(_backend_record(b, mode, point, dev, dtype, samples[b], repeats, compile_s.get(b),
                                           timers[b].memory(), medians.get("fused")))
        if "fused" in medians:
            ratios.append({"mode": mode, **point.fields(),
                           **{f"{b}_over_fused": round(medians[b] / medians["fused"], 3) for b in here if b != "fused"}})


def run_benchmark(
    batches: tuple[int, ...],
    lengths: tuple[int, ...],
    hiddens: tuple[int, ...],
    inner_steps: tuple[int, ...],
    *,
    backends: tuple[str, ...] = BACKENDS,
    modes: tuple[str, ...] = MODES,
    device: str = "cpu",
    dtype: str = "float32",
    repeats: int = 10,
    warmup: int = 3,
    state: str = "random",
    seed: int = 0,
    max_naive_bytes: float = 2e9,
    max_compiled_length: int | None = 250,
    clock: str = "wall",
    progress: Callable[[str], None] = lambda msg: None,
) -> dict[str, Any]:
    """Time every backend at every grid point; returns the JSON document ``crnn bench --json`` prints."""
    for name, value, least in (("repeats", repeats, 1), ("warmup", warmup, 0)):
        if not (isinstance(value, int) and least <= value <= MAX_CALLS):
            raise ConfigError(f"{name} must be an integer between {least} and {MAX_CALLS}, got {value!r:.40}")
    dev = resolve_device(device)
    torch_dtype = {"float32": torch.float32, "float64": torch.float64}[dtype]
    points = [GridPoint(*shape) for shape in itertools.product(batches, lengths, hiddens, inner_steps)]
    _check_bench_settings(dev, clock, points, torch_dtype)
    fns, notes = _backend_fns(dev)
    if "fused" in backends and "fused" not in fns:
        progress(f"crnn bench: no fused kernel on {dev} ({notes['fused']}); timing the fallbacks only")
    active = [b for b in backends if b in fns]
    if not active:
        raise ConfigError("no backend to time")
    load_before = load_avg()
    records: list[dict[str, Any]] = []
    ratios: list[dict[str, Any]] = []
    done = 0
    try:
        for done, point in enumerate(points):
            _time_point(point, done + 1, len(points), active, fns, modes, dev, torch_dtype, dtype, state, seed, warmup,
                        repeats, max_naive_bytes, max_compiled_length, clock, progress, records, ratios)
        interrupted = None
    except KeyboardInterrupt as exc:  # Ctrl-C: the rows measured so far are still a result
        interrupted = {"signal": str(exc) or "SIGINT", "points_done": done, "points": len(points)}
    machine = machine_info(dev)
    machine["load_avg_1m_before"] = load_before
    machine["load_avg_1m_after"] = load_avg()
    return {
        "machine": machine,
        "settings": {
            "repeats": repeats, "warmup": warmup, "dtype": dtype, "state": state, "activation": "relu",
            "lam": LAM, "eta": ETA, "seed": seed, "backends": active, "max_naive_bytes": max_naive_bytes,
            "max_compiled_length": max_compiled_length, "spread_warn": SPREAD_WARN, "clock": clock,
        },
        "backends": {b: notes.get(b, "") for b in backends},
        "records": records,
        "ratios": ratios,
        "summary": summarize(ratios),
        "growth_with_length": length_growth(records),
        **({"interrupted": interrupted} if interrupted else {}),
        "warnings": [
            f"B={r['batch']} T={r['length']} H={r['hidden']} S={r['inner_steps']} {r['mode']} {r['backend']}: "
            f"IQR {100 * r['iqr_rel']:.0f}% of the median (> {100 * SPREAD_WARN:.0f}%): too noisy to trust"
            for r in records if r.get("iqr_rel") is not None and r["iqr_rel"] > SPREAD_WARN
        ],
    }


def format_table(doc: dict[str, Any]) -> str:
    """The human-readable table: one line per shape and mode, medians in ms, ratios, spread, memory in MB.

    ``spread`` is the largest IQR/median of the row's backends; ``!`` marks a row above
    ``SPREAD_WARN`` (too noisy to trust). Compile times of ``compiled`` are listed below
    the table, then the grid medians of the ratios and the growth with T.
    """
    backends = doc["settings"]["backends"]
    by_key: dict[tuple, dict[str, dict[str, Any]]] = {}
    for r in doc["records"]:
        key = (r["batch"], r["length"], r["hidden"], r["inner_steps"], r["mode"])
        by_key.setdefault(key, {})[r["backend"]] = r
    header = ["B", "T", "H", "S", "mode"] + [f"{b} ms" for b in backends]
    others = [b for b in backends if b != "fused"]
    if "fused" in backends:
        header += [f"{b}/fused" for b in others]
    header += ["spread"] + [f"{b} MB" for b in backends]
    rows = [header]
    compile_lines = []
    for (B, T, H, S, mode), recs in by_key.items():
        row = [str(B), str(T), str(H), str(S), "fwd" if mode == "forward" else "fwd+bwd"]
        row += [f"{recs[b]['median_ms']:.3f}" if recs.get(b, {}).get("median_ms") is not None else "-" for b in backends]
        if "fused" in backends:
            row += [f"{recs[b]['ratio_to_fused']:.1f}x" if recs.get(b, {}).get("ratio_to_fused") else "-" for b in others]
        iqr = max((r.get("iqr_rel") or 0.0) for r in recs.values())
        row.append(f"{100 * iqr:.0f}%" + ("!" if iqr > doc["settings"].get("spread_warn", SPREAD_WARN) else ""))
        row += [
            f"{recs[b]['peak_memory_bytes'] / 2**20:.2f}" if recs.get(b, {}).get("peak_memory_bytes") is not None else "-"
            for b in backends
        ]
        rows.append(row)
        if recs.get("compiled", {}).get("compile_s") is not None:
            compile_lines.append(f"{B}/{T}/{H}/{S} {'fwd' if mode == 'forward' else 'fwd+bwd'} "
                                 f"{recs['compiled']['compile_s']:.1f}s")
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    m = doc["machine"]
    lines.append("")
    lines.append(f"{m['cpu']}, {m['logical_cpus']} logical CPUs, torch {m['torch']} with {m['torch_threads']} threads"
                 + (f", {m['gpu']}" if "gpu" in m else "") + f"; {doc['settings']['dtype']}, "
                 + ("thread CPU time, " if doc["settings"].get("clock") == "cpu" else "") + "medians of "
                 f"{doc['settings']['repeats']} repeats after {doc['settings']['warmup']} warm-up calls"
                 + (f"; 1-min load {m['load_avg_1m_before']} before, {m['load_avg_1m_after']} after"
                    if m.get("load_avg_1m_before") is not None else ""))
    lines.append(f"fused: {doc['backends'].get('fused', '')}")
    lines.append("spread: largest IQR/median of the row's backends; ! above "
                 f"{100 * doc['settings'].get('spread_warn', SPREAD_WARN):.0f}% (too noisy to trust)")
    if compile_lines:
        lines.append("compile time of compiled (B/T/H/S, first call, not in the medians): " + ", ".join(compile_lines))
    for mode, ratios in doc.get("summary", {}).items():
        parts = [f"{k.replace('_over_fused', '')}/fused {v['median']:.2f}x (range {v['min']:.2f}-{v['max']:.2f}, "
                 f"{v['points']} points)" for k, v in ratios.items()]
        lines.append(f"grid median, {mode}: " + "; ".join(parts))
    for g in doc.get("growth_with_length", []):
        lines.append(f"growth with T {g['lengths'][0]}->{g['lengths'][1]} ({g['backend']}, {g['mode']}, B={g['batch']} "
                     f"H={g['hidden']} S={g['inner_steps']}): time ~ T^{g['time_exponent']}"
                     + (f", memory ~ T^{g['memory_exponent']}" if "memory_exponent" in g else ""))
    methods = sorted({r["memory_method"] for r in doc["records"] if "memory_method" in r})
    lines.append("MB: " + ", ".join(methods) + " (see docs/kernels.md, Benchmarking)")
    if doc.get("warnings"):
        lines.append(f"WARNING: {len(doc['warnings'])} timings vary by more than "
                     f"{100 * doc['settings'].get('spread_warn', SPREAD_WARN):.0f}% (IQR/median) between repeats; "
                     "rerun on a quieter machine (--json lists them)")
    return "\n".join(lines)


BENCH_EPILOG = """
\b
Examples:
  crnn bench                                   # one point, about a minute (compiled compiles it)
  crnn bench --full                            # the default grid: 8 points, minutes
  crnn bench --batch 128 --length 11 --hidden 50 --inner-steps 1 --repeats 30
  crnn bench --batch 1 --batch 32 --batch 128 --length 11 --length 25 --length 100 \\
             --hidden 50 --hidden 128 --hidden 256 --inner-steps 1 --inner-steps 3   # the full grid
  crnn bench --json > bench.json
  crnn bench --device cuda
  crnn bench --layer                           # FastWeights vs nn.LSTM, lengths, bidirectional (about a minute)
  crnn bench --layer --layer-shape 32,128,128 --repeats 20 --json
"""


@click.command("bench", epilog=BENCH_EPILOG)
@click.option("--batch", "batches", type=click.IntRange(min=1), multiple=True,
              help=f"batch size B (repeatable; default {' '.join(map(str, DEFAULT_BATCH))})")
@click.option("--length", "lengths", type=click.IntRange(min=1), multiple=True,
              help=f"sequence length T (repeatable; default {' '.join(map(str, DEFAULT_LENGTH))})")
@click.option("--hidden", "hiddens", type=click.IntRange(min=1), multiple=True,
              help=f"hidden size H (repeatable; default {' '.join(map(str, DEFAULT_HIDDEN))})")
@click.option("--inner-steps", "inner", type=click.IntRange(min=1), multiple=True,
              help=f"inner steps S (repeatable; default {' '.join(map(str, DEFAULT_INNER))})")
@click.option("--backend", "backends", type=click.Choice(BACKENDS), multiple=True,
              help="backends to time (repeatable; default all)")
@click.option("--mode", "modes", type=click.Choice(MODES), multiple=True, help="modes (repeatable; default both)")
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
@click.option("--dtype", default="float32", show_default=True, type=click.Choice(["float32", "float64"]))
@click.option("--repeats", default=10, show_default=True, type=click.IntRange(min=1, max=MAX_CALLS),
              help="timed calls per backend")
@click.option("--warmup", default=3, show_default=True, type=click.IntRange(min=0, max=MAX_CALLS),
              help="untimed calls first")
@click.option("--state", default="random", show_default=True, type=click.Choice(STATES),
              help="initial h0/A0: random (a learned initial state), zero, or art (h0 = 0, A0=None and no A_T: "
                   "the op as the zero-init ART training step calls it), art-learned (random h0/A0, no A_T: the "
                   "learned init's step), art-free (one [H, H] A0 for the batch, no A_T: the free init's step)")
@click.option("--threads", type=click.IntRange(min=1), default=None, help="torch.set_num_threads (default: torch's)")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--max-naive-gb", default=2.0, show_default=True, type=click.FloatRange(min=0),
              help="skip naive forward+backward where it would save more than this for the backward")
@click.option("--max-compiled-length", default=250, show_default=True, type=click.IntRange(min=1),
              help="skip compiled above this T (torch.compile unrolls the T-step loop: compile time grows with T)")
@click.option("--clock", default="wall", show_default=True, type=click.Choice(list(CLOCKS)),
              help="wall: elapsed time; cpu: the thread's CPU time (needs --threads 1; robust on a shared machine)")
@click.option("--full", is_flag=True,
              help="the full default grid (B 1 128, T 11 25, H 50 128: minutes) instead of one point (about a minute); "
                   "--batch/--length/--hidden given still win")
@click.option("--layer", is_flag=True,
              help="time the FastWeights layer (fused) instead: no / equal / random lengths, bidirectional against "
                   "two unidirectional layers, and nn.LSTM of the same size, forward+backward, 2 threads unless "
                   "--threads (about a minute)")
@click.option("--layer-shape", "layer_shapes", multiple=True, metavar="B,T,H",
              help="with --layer: a shape to time (repeatable; default 128,11,50 32,128,128 32,512,128)")
@click.option("--json", "as_json", is_flag=True, help="one JSON document on stdout instead of the table")
@click.option("--quiet", "-q", is_flag=True, help="no progress on stderr")
def bench_command(batches, lengths, hiddens, inner, backends, modes, device, dtype, repeats, warmup, state,
                  threads, seed, max_naive_gb, max_compiled_length, clock, full, layer, layer_shapes, as_json,
                  quiet) -> None:
    """Time the fused fast-weights kernel against torch.compile of the reference, the reference and the naive loop.

    With --layer, time the FastWeights layer against nn.LSTM instead. Ctrl-C stops it and
    prints the rows measured so far (exit 130).
    """
    if layer or layer_shapes:
        _layer_from_cli(layer, layer_shapes, device, repeats, warmup, threads, seed, as_json, quiet)
        return
    if full:
        batches, lengths, hiddens = batches or FULL_BATCH, lengths or FULL_LENGTH, hiddens or FULL_HIDDEN
    threads_before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        doc = _run_from_cli(batches, lengths, hiddens, inner, backends, modes, device, dtype, repeats, warmup,
                            state, seed, max_naive_gb, max_compiled_length, clock, quiet)
    finally:  # an in-process caller (tests, notebooks) keeps its thread count
        torch.set_num_threads(threads_before)
    if len(sys.argv) > 1 and sys.argv[1] == "bench":  # run from the command line (not a test runner)
        doc["command"] = " ".join(["crnn", *sys.argv[1:]])
    if as_json:
        click.echo(json.dumps(doc, indent=2))
    else:
        click.echo(format_table(doc))
    stopped = doc.get("interrupted")
    if stopped:
        from crnn_core.training.train import Interrupted

        signum = getattr(signal.Signals, stopped["signal"], signal.SIGINT)
        raise Interrupted(f"{stopped['signal']} received: stopped after {stopped['points_done']} of "
                          f"{stopped['points']} grid points; the rows above are those measured", signum)


#: ``crnn bench`` options that choose the unroll benchmark's grid and so mean nothing with ``--layer``.
UNROLL_ONLY = ("batches", "lengths", "hiddens", "inner", "backends", "modes", "dtype", "state", "max_naive_gb",
               "max_compiled_length", "clock", "full")


def _layer_from_cli(layer, layer_shapes, device, repeats, warmup, threads, seed, as_json, quiet) -> None:
    """``crnn bench --layer``: ``layer_bench.run_layer_benchmark`` with 2 threads by default."""
    from . import layer_bench

    context = click.get_current_context()
    if not layer:
        raise click.UsageError("--layer-shape needs --layer")
    given = [param.opts[0] for param in context.command.params if param.name in UNROLL_ONLY
             and context.get_parameter_source(param.name) not in (None, click.core.ParameterSource.DEFAULT)]
    if given:
        raise click.UsageError(f"{', '.join(given)} choose the unroll benchmark; with --layer give --layer-shape B,T,H")
    try:
        shapes = tuple(layer_bench.parse_shape(text) for text in layer_shapes) or layer_bench.LAYER_SHAPES
    except ValueError as error:
        raise click.BadParameter(str(error), param_hint="--layer-shape") from None
    threads_before = torch.get_num_threads()
    torch.set_num_threads(threads or 2)
    try:
        doc = layer_bench.run_layer_benchmark(
            shapes, repeats=repeats, warmup=warmup, device=device, seed=seed,
            progress=(lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True)))
    finally:  # an in-process caller (tests, notebooks) keeps its thread count
        torch.set_num_threads(threads_before)
    click.echo(json.dumps(doc, indent=2) if as_json else layer_bench.format_layer_table(doc))


def _run_from_cli(batches, lengths, hiddens, inner, backends, modes, device, dtype, repeats, warmup, state, seed,
                  max_naive_gb, max_compiled_length, clock, quiet) -> dict[str, Any]:
    return run_benchmark(
        tuple(batches) or DEFAULT_BATCH,
        tuple(lengths) or DEFAULT_LENGTH,
        tuple(hiddens) or DEFAULT_HIDDEN,
        tuple(inner) or DEFAULT_INNER,
        backends=tuple(backends) or BACKENDS,
        modes=tuple(modes) or MODES,
        device=device,
        dtype=dtype,
        repeats=repeats,
        warmup=warmup,
        state=state,
        seed=seed,
        max_naive_bytes=max_naive_gb * 1e9,
        max_compiled_length=max_compiled_length,
        clock=clock,
        progress=(lambda msg: None) if quiet else (lambda msg: click.echo(msg, err=True)),
    )


# -- crnn kernels ---------------------------------------------------------------------------------


def kernel_report() -> dict[str, Any]:
    """Which fast-weights backend runs on which device, and why."""
    from ..fast_weights import fused as ff

    ok, reason = ff.load_status()
    devices: dict[str, Any] = {}
    for name in ("cpu", "cuda"):
        fused_ok, why = ff.device_status(name)
        available = name == "cpu" or torch.cuda.is_available()
        devices[name] = {
            "device_available": available,
            "fused": fused_ok,
            "fused_reason": why,
            "reference": available,
            "auto": ("fused" if fused_ok else "reference") if available else None,
        }
    env = {k: os.environ[k] for k in ("CRNN_NO_FUSED", "CRNN_NO_JIT", "CRNN_KERNEL_CACHE", "CRNN_CPU_ARCH",
                                      "CRNN_CPU_CAPABILITY", "CRNN_NO_POOL") if k in os.environ}
    src = ff.kernel_sources()
    return {
        "fused_loaded": ok,
        "reason": reason,
        "build_info": ff.build_info(),
        "block_pool": ff.block_pool_info(),
        "kernel_sources": str(src) if src else None,
        "cache_dir": str(ff._cache_root()),
        "environment": env,
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "devices": devices,
    }


@click.command("kernels", epilog="\b\nExamples:\n  crnn kernels\n  crnn kernels --json\n  CRNN_NO_FUSED=1 crnn kernels")
@click.option("--json", "as_json", is_flag=True, help="one JSON document on stdout")
def kernels_command(as_json: bool) -> None:
    """Which fast-weights backends are available on which device, and why."""
    rep = kernel_report()
    if as_json:
        click.echo(json.dumps(rep, indent=2))
        return
    click.echo(f"fused kernel: {'loaded' if rep['fused_loaded'] else 'NOT available'} ({rep['reason']})")
    if rep["build_info"]:
        bi = rep["build_info"]
        runnable = bi.get("cpu_paths_runnable", [])
        hint = "; CRNN_CPU_CAPABILITY=NAME picks a lower one" if len(runnable) > 1 else ""
        click.echo(f"  CPU path: {bi.get('cpu_isa')} (compiled: {', '.join(bi.get('cpu_paths', []))}; "
                   f"this CPU runs: {', '.join(runnable)}{hint})")
        click.echo(f"  built with: openmp {bi.get('openmp')}, cuda {bi.get('cuda')}")
    pool = rep["block_pool"]
    if pool:
        state = "active" if pool["enabled"] else "off (CRNN_NO_POOL=1)"
        click.echo(f"  CPU block pool: {state}; reuses output blocks >= {pool['min_block_bytes'] // 1024} KiB, "
                   f"keeps <= {pool['limit_bytes'] >> 20} MiB ({pool['cached_bytes'] / 2**20:.1f} MiB now)")
    click.echo(f"  sources: {rep['kernel_sources'] or 'not found'}; JIT cache: {rep['cache_dir']}")
    if rep["environment"]:
        click.echo("  environment: " + " ".join(f"{k}={v}" for k, v in rep["environment"].items()))
    for name, d in rep["devices"].items():
        if not d["device_available"]:
            click.echo(f"{name}: device not available (torch {rep['torch']}, CUDA {rep['torch_cuda'] or 'none'}); "
                       f"fused: {d['fused_reason']}")
            continue
        fused = "yes" if d["fused"] else f"no ({d['fused_reason']})"
        click.echo(f"{name}: fused {fused}; reference yes; backend=auto -> {d['auto']}")
