#!/usr/bin/env python
"""The fused CUDA fast-weights op against the strongest pure-PyTorch baselines on one GPU.

Times, in one process on the same inputs, per shape and mode (``forward`` under
``torch.no_grad()``, ``forward+backward`` with a fixed upstream gradient of the outputs):

* ``fused``       -- ``torch.ops.crnn.fastweights_*`` (the CUDA kernels in ``csrc/``),
* ``eager``       -- ``fastweights_reference`` run eagerly (the fallback backend),
* ``compiled``    -- ``torch.compile(fastweights_reference)`` (default mode), warm; the first
                     call's time (compilation) is reported apart as ``compile_s``,
* ``cudagraphs``  -- ``torch.compile(..., mode="reduce-overhead")`` (CUDA graphs), warm,
                     at the shapes listed in ``--graph-shapes`` only (compilation is slow).

and, at one layer shape (``--layer-shape``, default B 1024, T 100, H 256), forward+backward of
``nn.LSTM`` (cuDNN on a GPU) against the ``FastWeights`` layer, one layer of H units each, on the
same input (``layers`` in the JSON document; measured first).

Each backend's steady state is the median of ``--repeats`` calls timed
after ``--warmup`` untimed calls (wall clock around a synchronised call); ``min``/``max`` are reported too. Compiled baselines are
skipped for T > ``--max-compile-t`` (the reference's Python loop unrolls into the graph)
and once ``--compile-budget`` seconds of compilation are spent. Writes one JSON document
(``--json PATH``) and prints a table. Used by ``benchmarks/gpu_check.sh``.

``python benchmarks/gpu_bench.py smoke`` instead runs one small forward and backward on
each shared-memory path (for ``compute-sanitizer``), checking against the reference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any, Callable

import torch
from torch import nn

from crnn_plugins.fast_weights import fused as ff
from crnn_plugins.commands.fastweights_bench import bench_inputs
from crnn_plugins.fast_weights.reference import fastweights_reference

LAM, ETA = 0.95, 0.5
# (B, T, H, S): the ART shape first, then points of the `crnn bench` grid, then long sequences.
DEFAULT_SHAPES = [
    (128, 11, 50, 1), (1, 11, 50, 1), (32, 25, 128, 1), (128, 25, 128, 3), (128, 100, 128, 1),
    (32, 100, 256, 1), (1024, 11, 50, 1), (32, 1000, 128, 1), (32, 1000, 256, 1),
]


def make_call(fn: Callable, args: list[torch.Tensor], upstream: torch.Tensor, mode: str, S: int) -> Callable:
    """A closure that runs ``fn`` once in ``mode`` (leaves' grads reset each call)."""
    if mode == "forward":
        def call() -> None:
            with torch.no_grad():
                fn(*args, LAM, ETA, S, "relu")
        return call
    leaves = [a.detach().clone().requires_grad_(True) for a in args]

    def call() -> None:
        for a in leaves:
            a.grad = None
        out, _ = fn(*leaves, LAM, ETA, S, "relu")
        torch.autograd.backward(out, upstream)
    return call


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_call(call: Callable, repeats: int, warmup: int, device: str) -> dict[str, float]:
    """Median/min/max milliseconds of ``call`` after warm-up, and the first call's seconds.

    Calls slower than 50 ms (long sequences with the eager reference) get at most 5 repeats.
    """
    sync(device)
    t0 = time.perf_counter()
    call()
    sync(device)
    first_s = time.perf_counter() - t0
    for _ in range(warmup):
        call()
    sync(device)
    times = []
    while len(times) < repeats:
        t0 = time.perf_counter()
        call()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
        if len(times) >= 5 and statistics.median(times) > 50:
            break
    return {"median_ms": statistics.median(times), "min_ms": min(times), "max_ms": max(times),
            "repeats": len(times), "first_s": first_s}


def peak_memory(call: Callable, device: str) -> int | None:
    """Peak bytes allocated during one call, above what was allocated before it (CUDA only)."""
    if device != "cuda":
        return None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    call()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def bench_layers(B: int, T: int, H: int, args: argparse.Namespace) -> dict[str, Any]:
    """Forward+backward of ``nn.LSTM`` and of the ``FastWeights`` layer (H units, one layer) on one
    ``[B, T, H]`` input that needs its gradient too, as inside a network; medians and their ratio."""
    from crnn_plugins.fast_weights.layer import FastWeights

    dtype = getattr(torch, args.dtype)
    x = torch.randn(B, T, H, device=args.device, dtype=dtype, requires_grad=True)
    upstream = torch.randn(B, T, H, device=args.device, dtype=dtype)
    rec: dict[str, Any] = {"B": B, "T": T, "H": H, "mode": "forward+backward", "dtype": args.dtype}
    for name, make in (("lstm", lambda: nn.LSTM(H, H, batch_first=True)), ("fastweights", lambda: FastWeights(H, H))):
        try:
            layer = make().to(device=args.device, dtype=dtype)

            def call(layer: nn.Module = layer) -> None:
                layer.zero_grad(set_to_none=True)
                x.grad = None
                out, _ = layer(x)
                out.backward(upstream)

            rec[name] = time_call(call, args.repeats, args.warmup, args.device)
            rec[name]["peak_memory_bytes"] = peak_memory(call, args.device)
        except Exception as exc:  # noqa: BLE001 - record and go on: this is a report
            rec[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
    lstm, fw = rec["lstm"].get("median_ms"), rec["fastweights"].get("median_ms")
    if lstm and fw:
        rec["fastweights/lstm"] = fw / lstm
    shown = {k: f"{v:.3f} ms" if v else "error" for k, v in (("nn.LSTM", lstm), ("FastWeights", fw))}
    print(f"layers B={B} T={T} H={H} forward+backward: " + ", ".join(f"{k} {v}" for k, v in shown.items()), flush=True)
    return rec


def bench(args: argparse.Namespace) -> dict[str, Any]:
    layers = None
    if args.layer_shape != "none":
        B, T, H = (int(v) for v in args.layer_shape.split(","))
        layers = bench_layers(B, T, H, args)
        if args.json:
            write_json(args.json, summary(args, [], 0.0, layers))
    dtype = getattr(torch, args.dtype)
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shape] if args.shape else DEFAULT_SHAPES
    graph_shapes = {tuple(int(v) for v in s.split(",")) for s in args.graph_shapes}
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    compiled_fn = torch.compile(fastweights_reference, dynamic=False)
    graphs_fn = torch.compile(fastweights_reference, dynamic=False, mode="reduce-overhead")
    compile_spent = 0.0
    records = []
    for B, T, H, S in shapes:
        inputs, upstream = bench_inputs(B, T, H, args.device, dtype)
        for mode in ("forward", "forward+backward"):
            backends: dict[str, Callable] = {"fused": ff.fastweights_fused, "eager": fastweights_reference}
            if T <= args.max_compile_t and compile_spent < args.compile_budget:
                backends["compiled"] = compiled_fn
                if (B, T, H, S) in graph_shapes and args.device == "cuda":
                    backends["cudagraphs"] = graphs_fn
            rec: dict[str, Any] = {"B": B, "T": T, "H": H, "S": S, "mode": mode, "dtype": args.dtype}
            for name, fn in backends.items():
                call = make_call(fn, inputs, upstream, mode, S)
                try:
                    t = time_call(call, args.repeats, args.warmup, args.device)
                    t["peak_memory_bytes"] = peak_memory(call, args.device)
                except Exception as exc:  # noqa: BLE001 - record and go on: this is a report
                    rec[name] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
                    continue
                if name in ("compiled", "cudagraphs"):
                    t["compile_s"] = max(t["first_s"] - t["median_ms"] / 1e3, 0.0)
                    compile_spent += t["first_s"]
                rec[name] = t
            fused = rec.get("fused", {}).get("median_ms")
            for name in ("eager", "compiled", "cudagraphs"):
                base = rec.get(name, {}).get("median_ms")
                if fused and base:
                    rec[f"{name}/fused"] = base / fused
            records.append(rec)
            print(format_row(rec), flush=True)
            if args.json:  # after every record, so a run cut short by its time limit keeps what it measured
                write_json(args.json, summary(args, records, compile_spent, layers))
    return summary(args, records, compile_spent, layers)


def summary(args: argparse.Namespace, records: list[dict[str, Any]], compile_spent: float,
            layers: dict[str, Any] | None) -> dict[str, Any]:
    """The JSON document: the device and versions, the settings, the layer comparison and the records so far."""
    name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    return {"device": name, "torch": torch.__version__, "cuda": torch.version.cuda,
            "fused_status": ff.device_status(args.device)[1], "repeats": args.repeats, "warmup": args.warmup,
            "compile_seconds_total": compile_spent, "layers": layers, "records": records}


def write_json(path: str, doc: dict[str, Any]) -> None:
    with open(path, "w") as fh:
        json.dump(doc, fh, indent=1)


def format_row(rec: dict[str, Any]) -> str:
    def ms(name: str) -> str:
        r = rec.get(name)
        if r is None:
            return f"{'-':>10}"
        if "error" in r:
            return f"{'error':>10}"
        return f"{r['median_ms']:>10.3f}"

    ratios = "  ".join(f"{k.split('/')[0]}/fused={rec[k]:.1f}x" for k in rec if k.endswith("/fused"))
    return (f"B={rec['B']:<5} T={rec['T']:<5} H={rec['H']:<4} S={rec['S']} {rec['mode']:<17}"
            f"{ms('fused')}{ms('eager')}{ms('compiled')}{ms('cudagraphs')}  {ratios}")


def smoke(args: argparse.Namespace) -> None:
    """Small forward+backward on each shared-memory path, checked against the reference (for sanitizers)."""
    cases = [(2, 5, 7, 3, torch.float64, "tanh"),      # everything in the default 48 KiB
             (2, 25, 128, 1, torch.float32, "relu"),   # W and history in opted-in shared memory
             (1, 9, 1024, 1, torch.float32, "relu"),   # W and history in global memory
             # H <= 64, one warp per example: three examples per block (B > 2 x 132 SMs), keys
             # in shared memory, then keys in global memory (three 300-step histories do not fit)
             (300, 11, 50, 1, torch.float32, "relu"),
             (270, 300, 64, 1, torch.float32, "tanh")]
    worst = 0.0
    for B, T, H, S, dtype, act in cases:
        inputs, upstream = bench_inputs(B, T, H, args.device, dtype)
        results = []
        for fn in (fastweights_reference, ff.fastweights_fused):
            leaves = [a.detach().clone().requires_grad_(True) for a in inputs]
            out, A = fn(*leaves, LAM, ETA, S, act)
            grads = torch.autograd.grad((out * upstream).sum() + A.sum(), leaves)
            results.append([out, A, *grads])
        for ref, got in zip(*results):
            err = ((ref - got).abs().max() / (ref.abs().max() + 1e-12)).item()
            worst = max(worst, err)
        print(f"smoke B={B} T={T} H={H} S={S} {dtype} {act}: worst relative error so far {worst:.2e}", flush=True)
    sync(args.device)
    if worst > 1e-3:
        raise SystemExit(f"smoke: fused and reference disagree (relative error {worst:.2e})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", nargs="?", default="bench", choices=["bench", "smoke"])
    ap.add_argument("--shape", action="append", help="B,T,H,S (repeatable; default: a built-in list)")
    ap.add_argument("--graph-shapes", action="append", default=["128,11,50,1"],
                    help="shapes that also get the CUDA-graphs baseline")
    ap.add_argument("--layer-shape", default="1024,100,256",
                    help="B,T,H of the nn.LSTM vs FastWeights layer comparison (none: skip it)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--max-compile-t", type=int, default=100)
    ap.add_argument("--compile-budget", type=float, default=150.0, help="seconds of compilation in all")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"], help="cpu: a dry run of this script")
    args = ap.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_bench: PyTorch sees no CUDA device")
    ok, reason = ff.device_status(args.device)
    if not ok:
        raise SystemExit(f"gpu_bench: the fused CUDA kernel is not usable: {reason}")
    if args.what == "smoke":
        smoke(args)
        return
    print(f"{'shape':<40}{'fused ms':>10}{'eager':>10}{'compiled':>10}{'cudagraph':>10}", flush=True)
    bench(args)


if __name__ == "__main__":
    main()
