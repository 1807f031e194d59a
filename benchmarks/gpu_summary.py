#!/usr/bin/env python
"""The headline numbers of a ``benchmarks/gpu_check.sh`` run as one JSON document.

Reads the JSON results the check's steps wrote into its output folder and writes
``summary.json`` beside them::

    python benchmarks/gpu_summary.py OUT --commit "$(git rev-parse HEAD)"

Keys (``null`` where the step that measures it failed, was skipped or ran out of time):

* ``date`` (ISO 8601, UTC), ``commit``, ``device`` (from ``gpu_bench.json``);
* ``art_epoch_s_zero``, ``art_epoch_s_learned``: training seconds of one ART epoch with the
  fused backend, eager step (``art_epoch.json``; the median over its runs);
* ``art_epoch_s_zero_compiled``, ``art_epoch_s_zero_cuda_graphs``, ``art_epoch_s_learned_cuda_graphs``:
  the same with ``train.compile=true`` and with ``train.cuda_graphs=true`` (the last epoch of two:
  the first compiles or captures);
* ``fwd_bwd_ms_fused``, ``fwd_bwd_ms_eager``, ``fwd_bwd_ms_compiled``, ``fwd_bwd_ms_compiled_graphs``:
  the op's forward+backward at the ART shape (B 128, T 11, H 50, S 1): the fused kernel, the
  eager reference, ``torch.compile`` of it and the same with ``mode="reduce-overhead"``
  (``gpu_bench.json``, medians);
* ``lstm_ms_b1024``, ``fastweights_ms_b1024``: forward+backward of ``nn.LSTM`` (cuDNN) and of
  the ``FastWeights`` layer at B 1024, T 100, H 256 (``gpu_bench.json``'s ``layers``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics
from pathlib import Path
from typing import Any

#: The op's shape in the ART training step (B, T, H, S).
ART_SHAPE = (128, 11, 50, 1)
#: summary key -> gpu_bench.py backend name, at the ART shape, forward+backward.
OP_KEYS = {"fwd_bwd_ms_fused": "fused", "fwd_bwd_ms_eager": "eager", "fwd_bwd_ms_compiled": "compiled",
           "fwd_bwd_ms_compiled_graphs": "cudagraphs"}
#: summary key -> (results file, init): the fused backend's epoch seconds.
EPOCH_KEYS = {"art_epoch_s_zero": ("art_epoch.json", "zero"), "art_epoch_s_learned": ("art_epoch.json", "learned"),
              "art_epoch_s_zero_compiled": ("art_epoch_compiled.json", "zero"),
              "art_epoch_s_zero_cuda_graphs": ("art_epoch_graphs.json", "zero"),
              "art_epoch_s_learned_cuda_graphs": ("art_epoch_graphs.json", "learned")}


def read_json(path: Path) -> Any:
    """The JSON document at ``path``, or None where it is missing or not valid JSON (a step cut short)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def median_ms(record: Any) -> float | None:
    """A timing's ``median_ms``, or None where it is missing or recorded an error."""
    if isinstance(record, dict) and isinstance(record.get("median_ms"), (int, float)):
        return float(record["median_ms"])
    return None


def op_times(bench: Any) -> dict[str, float | None]:
    """The op's forward+backward medians at :data:`ART_SHAPE` per summary key."""
    out: dict[str, float | None] = dict.fromkeys(OP_KEYS)
    records = bench.get("records", []) if isinstance(bench, dict) else []
    for rec in records:
        if (rec.get("B"), rec.get("T"), rec.get("H"), rec.get("S")) == ART_SHAPE and rec.get("mode") == "forward+backward":
            out = {key: median_ms(rec.get(name)) for key, name in OP_KEYS.items()}
    return out


def layer_times(bench: Any) -> dict[str, float | None]:
    """``lstm_ms_b1024`` and ``fastweights_ms_b1024`` from the bench's ``layers`` record."""
    layers = bench.get("layers") if isinstance(bench, dict) else None
    if not isinstance(layers, dict) or (layers.get("B"), layers.get("T"), layers.get("H")) != (1024, 100, 256):
        return {"lstm_ms_b1024": None, "fastweights_ms_b1024": None}
    return {"lstm_ms_b1024": median_ms(layers.get("lstm")), "fastweights_ms_b1024": median_ms(layers.get("fastweights"))}


def epoch_seconds(records: Any, init: str) -> float | None:
    """The median training seconds of the fused backend's ``init`` epochs in ``art_epoch.py`` records."""
    if not isinstance(records, list):
        return None
    times = [r["epoch_train_s"] for r in records if isinstance(r, dict) and r.get("init") == init
             and r.get("backend") == "fused" and isinstance(r.get("epoch_train_s"), (int, float))]
    return float(statistics.median(times)) if times else None


def build_summary(out: Path, commit: str | None, date: str | None = None) -> dict[str, Any]:
    """The summary document of the check whose results are in ``out`` (module docstring)."""
    bench = read_json(out / "gpu_bench.json")
    doc: dict[str, Any] = {
        "date": date or datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "commit": commit or None,
        "device": bench.get("device") if isinstance(bench, dict) else None,
    }
    for key, (name, init) in EPOCH_KEYS.items():
        doc[key] = epoch_seconds(read_json(out / name), init)
    doc.update(op_times(bench))
    doc.update(layer_times(bench))
    return doc


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path, help="the gpu_check.sh output folder (summary.json is written there)")
    ap.add_argument("--commit", default=None, help="the checkout's commit (git rev-parse HEAD)")
    args = ap.parse_args()
    if not args.out.is_dir():
        raise SystemExit(f"gpu_summary: {args.out} is not a folder")
    doc = build_summary(args.out, args.commit)
    (args.out / "summary.json").write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
