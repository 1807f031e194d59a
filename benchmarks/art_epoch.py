#!/usr/bin/env python
"""End-to-end effect of the fused kernel: seconds per ART training epoch, fused vs reference.

Runs ``crnn run --cell fastweights --task art --epochs 1`` once per (init, backend),
alternating the backends, in fresh processes, and reports the training wall time of the
epoch (``wall_time`` of the run summary: the optimisation steps, without the validation
pass) and the whole command's time. Example (the numbers in docs/benchmarks.md):

    python benchmarks/art_epoch.py --init zero --init learned --repeats 2

Use ``--train-size`` for a quicker, partial epoch (e.g. 20000 sequences).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time


def one_epoch(init: str, backend: str, train_size: int | None, threads: int | None, extra: list[str]) -> dict:
    with tempfile.TemporaryDirectory(prefix="crnn-art-epoch-") as out:
        cmd = [sys.executable, "-m", "crnn_core", "run", "--cell", "fastweights", "--init", init, "--task", "art",
               "--epochs", "1", "--no-early-stop", "--set", f"cell.backend={backend}", "--out", out, "--force", "-q"]
        if train_size:
            cmd += ["--set", f"task.train_size={train_size}"]
        if threads:
            cmd += ["--set", f"train.threads={threads}"]
        cmd += extra
        start = time.perf_counter()
        proc = subprocess.run(cmd, capture_output=True, text=True)
        total = time.perf_counter() - start
        if proc.returncode != 0:
            raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr}")
        summary = json.loads(proc.stdout)
        return {"init": init, "backend": backend, "epoch_train_s": summary["wall_time"], "command_s": round(total, 2),
                "steps": summary["steps"], "val": summary["final"]["metrics"] if summary.get("final") else None}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", action="append", default=None, help="init strategy (repeatable; default zero)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--train-size", type=int, default=None, help="task.train_size (default: the task's 100000)")
    ap.add_argument("--threads", type=int, default=None, help="train.threads")
    ap.add_argument("--json", action="store_true", help="print the records as JSON")
    ap.add_argument("extra", nargs="*", help="more arguments for crnn run (after --)")
    args = ap.parse_args()
    inits = args.init or ["zero"]
    records = []
    for init in inits:
        for r in range(args.repeats):
            for backend in ("fused", "reference") if r % 2 == 0 else ("reference", "fused"):
                rec = one_epoch(init, backend, args.train_size, args.threads, args.extra)
                print(f"init={init} backend={backend}: {rec['epoch_train_s']:.2f} s training, "
                      f"{rec['command_s']:.2f} s command", file=sys.stderr)
                records.append(rec)
    if args.json:
        print(json.dumps(records, indent=2))
        return
    print(f"{'init':<8} {'backend':<10} {'s/epoch (train)':>16} {'command s':>10}")
    for init in inits:
        med = {}
        for backend in ("fused", "reference"):
            rs = [r for r in records if r["init"] == init and r["backend"] == backend]
            med[backend] = statistics.median(r["epoch_train_s"] for r in rs)
            print(f"{init:<8} {backend:<10} {med[backend]:>16.2f} {statistics.median(r['command_s'] for r in rs):>10.2f}")
        print(f"{init:<8} {'ratio':<10} {med['reference'] / med['fused']:>15.2f}x")


if __name__ == "__main__":
    main()
