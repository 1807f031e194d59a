#!/usr/bin/env python
"""End-to-end effect of the fused kernel: seconds per ART training epoch, fused vs reference.

Runs ``crnn run --cell fastweights --task art --epochs N`` once per (init, backend),
alternating the backends, in fresh processes, and reports the training wall time of the
first epoch and of the last (``wall_time`` of metrics.jsonl: the optimisation steps, without
the validation pass) and the whole command's time. With ``train.compile=true`` the first
epoch includes the compilation and the last (``--epochs 2``) is the steady state. Examples
(the numbers in docs/performance.md):

    python benchmarks/art_epoch.py --init zero --init learned --repeats 2
    python benchmarks/art_epoch.py --init zero --init learned --repeats 3 --epochs 2 -- --set train.compile=true

``--profile`` instead times the parts of one training step in this process (data,
embedding, init, projection, op, head, optimiser, other; benchmarks/step_profile.py) for
the baseline step (``train.adam_impl=for-loop``, eager) and with the
options after ``--``:

    python benchmarks/art_epoch.py --profile --init zero --init learned --threads 2 -- --set train.compile=true

Use ``--train-size`` for a quicker, partial epoch (e.g. 20000 sequences).

``--competitors N`` measures a shared machine: each (init, backend) epoch first on the quiet
machine, then with N busy processes (one pure-Python spin loop each) competing for the CPUs,
and reports the loaded / quiet ratio (a fair share on C cores is about (N + threads) / C x):

    python benchmarks/art_epoch.py --competitors 2 --backend fused --repeats 2
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Iterator

#: A busy competitor: one process spinning on one CPU until it is killed.
SPIN = "while True: pass"


@contextlib.contextmanager
def competitors(n: int) -> Iterator[list[subprocess.Popen]]:
    """``n`` busy processes for the duration of the block (killed, and waited for, on the way out)."""
    procs = [subprocess.Popen([sys.executable, "-c", SPIN], start_new_session=True) for _ in range(n)]
    try:
        yield procs
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        for proc in procs:
            proc.wait()


def loaded_ratios(records: list[dict]) -> list[dict]:
    """Per (init, backend): the median quiet and loaded epoch times and their ratio."""
    out = []
    for key in dict.fromkeys((r["init"], r["backend"]) for r in records):
        times = {load: [r["epoch_train_s"] for r in records if (r["init"], r["backend"]) == key and r["load"] == load]
                 for load in ("quiet", "loaded")}
        if times["quiet"] and times["loaded"]:
            quiet, loaded = statistics.median(times["quiet"]), statistics.median(times["loaded"])
            out.append({"init": key[0], "backend": key[1], "quiet_s": round(quiet, 3), "loaded_s": round(loaded, 3),
                        "ratio": round(loaded / quiet, 2)})
    return out


def one_epoch(init: str, backend: str, train_size: int | None, threads: int | None, extra: list[str],
              epochs: int = 1) -> dict:
    with tempfile.TemporaryDirectory(prefix="crnn-art-epoch-") as out:
        cmd = [sys.executable, "-m", "crnn_core", "run", "--cell", "fastweights", "--init", init, "--task", "art",
               "--epochs", str(epochs), "--no-early-stop", "--set", f"cell.backend={backend}", "--out", out, "--force", "-q"]
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
        with open(f"{out}/metrics.jsonl") as fh:
            lines = [json.loads(line) for line in fh if line.strip()]
        ends = [line["wall_time"] for line in lines]
        return {"init": init, "backend": backend, "epoch_train_s": round(ends[-1] - (ends[-2] if len(ends) > 1 else 0), 3),
                "threads_chosen": lines[-1].get("threads"),
                "first_epoch_s": ends[0], "epochs": len(ends), "command_s": round(total, 2), "extra": extra,
                "steps": summary["steps"], "val": summary["final"]["metrics"] if summary.get("final") else None}


def profile(args: argparse.Namespace, inits: list[str]) -> None:
    """``--profile``: the per-part table, before (for-loop Adam, eager) and with the options after ``--``."""
    import platform
    import os

    import torch

    from crnn_core.interfaces.kinds import parse_overrides
    from step_profile import profile_step, table

    pairs = [args.extra[i + 1] for i, a in enumerate(args.extra) if a == "--set" and i + 1 < len(args.extra)]
    after = parse_overrides(pairs)
    after["train"].setdefault("adam_impl", "auto")
    before = parse_overrides(["train.adam_impl=for-loop"])
    if args.train_size:
        for o in (before, after):
            o["task"]["train_size"] = str(args.train_size)
    variants = [("before", before), ("after", after)]
    if args.with_reference:  # the strongest alternative: the reference backend with the same options
        ref = parse_overrides([*pairs, "cell.backend=reference"])
        ref["train"].setdefault("adam_impl", "auto")
        ref["task"].update(after["task"])
        variants.append(("reference", ref))
    results, labels = [], []
    for init in inits:
        for name, overrides in variants:
            torch.manual_seed(0)
            results.append(profile_step(init, overrides, args.steps, args.blocks, args.clock, args.threads))
            labels.append(f"{init} {name}")
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(table(results, labels))
    after_set = " ".join(f"{scope}.{k}={v}" for scope, kv in after.items() for k, v in kv.items())
    print(f"\nbefore: train.adam_impl=for-loop, eager, per-parameter NaN check, the cell projects the embeddings; "
          f"after: {after_set}" + ("; reference: the same with cell.backend=reference" if args.with_reference else ""))
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{results[0]['threads']} threads, backend {results[0]['backend']}; {args.clock} time, medians of "
          f"{args.blocks} blocks of {args.steps} steps; 1-min load {os.getloadavg()[0]:.2f} after")


def shared_machine(args: argparse.Namespace, inits: list[str], backends: list[str]) -> None:
    """``--competitors N``: every (init, backend) epoch quiet, then beside N busy processes, in turns."""
    records = []
    for r in range(args.repeats):
        for init in inits:
            for backend in backends:
                for load in ("quiet", "loaded"):
                    with competitors(args.competitors if load == "loaded" else 0):
                        rec = one_epoch(init, backend, args.train_size, args.threads, args.extra, args.epochs)
                    rec["load"] = load
                    chosen = f" ({rec['threads_chosen']} threads chosen)" if rec["threads_chosen"] else ""
                    print(f"init={init} backend={backend} {load}: {rec['epoch_train_s']:.2f} s training{chosen}",
                          file=sys.stderr)
                    records.append(rec)
    ratios = loaded_ratios(records)
    if args.json:
        print(json.dumps({"competitors": args.competitors, "records": records, "ratios": ratios}, indent=2))
        return
    print(f"{'init':<8} {'backend':<10} {'quiet s/epoch':>14} {'loaded s/epoch':>15} {'ratio':>7}")
    for row in ratios:
        print(f"{row['init']:<8} {row['backend']:<10} {row['quiet_s']:>14.2f} {row['loaded_s']:>15.2f} {row['ratio']:>6.2f}x")
    print(f"{args.competitors} busy processes beside the loaded runs; {os.cpu_count()} CPUs; "
          f"threads {args.threads or 'default'}; options: {' '.join(args.extra) or '(defaults)'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", action="append", default=None, help="init strategy (repeatable; default zero)")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--train-size", type=int, default=None, help="task.train_size (default: the task's 100000)")
    ap.add_argument("--threads", type=int, default=None, help="train.threads")
    ap.add_argument("--json", action="store_true", help="print the records as JSON")
    ap.add_argument("--json-out", default=None, metavar="PATH",
                    help="also write the records as JSON to PATH, after each run (benchmarks/gpu_check.sh)")
    ap.add_argument("--epochs", type=int, default=1, help="epochs per run; the last one is reported (2 with compile)")
    ap.add_argument("--backend", action="append", default=None, choices=["fused", "reference"],
                    help="cell.backend (repeatable; default both)")
    ap.add_argument("--profile", action="store_true", help="per-part table of one step instead of epochs")
    ap.add_argument("--competitors", type=int, default=0, metavar="N",
                    help="each epoch quiet and beside N busy processes, with the loaded/quiet ratio")
    ap.add_argument("--with-reference", action="store_true",
                    help="--profile: also the reference backend with the options after -- (e.g. train.compile=true)")
    ap.add_argument("--steps", type=int, default=50, help="--profile: steps per block")
    ap.add_argument("--blocks", type=int, default=5, help="--profile: blocks (medians over them)")
    ap.add_argument("--clock", choices=["wall", "cpu"], default="wall", help="--profile: elapsed or process CPU time")
    ap.add_argument("extra", nargs="*", help="more arguments for crnn run (after --)")
    args = ap.parse_args()
    args.extra = [a for a in args.extra if a != "--"]  # a second "--" (e.g. appended by a wrapper) is no argument
    inits = args.init or ["zero"]
    if args.profile:
        profile(args, inits)
        return
    backends = args.backend or ["fused", "reference"]
    if args.competitors:
        shared_machine(args, inits, backends)
        return
    records = []
    for init in inits:
        for r in range(args.repeats):
            for backend in backends if r % 2 == 0 else backends[::-1]:
                rec = one_epoch(init, backend, args.train_size, args.threads, args.extra, args.epochs)
                print(f"init={init} backend={backend}: {rec['epoch_train_s']:.2f} s training (first epoch "
                      f"{rec['first_epoch_s']:.2f} s), {rec['command_s']:.2f} s command", file=sys.stderr)
                records.append(rec)
                if args.json_out:  # after each run, so a run cut short by its time limit keeps what it measured
                    with open(args.json_out, "w") as fh:
                        json.dump(records, fh, indent=2)
    if args.json:
        print(json.dumps(records, indent=2))
        return
    print(f"{'init':<8} {'backend':<10} {'s/epoch (train)':>16} {'all runs':>22} {'first epoch':>12} {'command s':>10}")
    for init in inits:
        med = {}
        for backend in backends:
            rs = [r for r in records if r["init"] == init and r["backend"] == backend]
            med[backend] = statistics.median(r["epoch_train_s"] for r in rs)
            runs = ", ".join(f"{r['epoch_train_s']:.2f}" for r in rs)
            print(f"{init:<8} {backend:<10} {med[backend]:>16.2f} {runs:>22} "
                  f"{statistics.median(r['first_epoch_s'] for r in rs):>12.2f} "
                  f"{statistics.median(r['command_s'] for r in rs):>10.2f}")
        if len(backends) == 2:
            print(f"{init:<8} {'ratio':<10} {med['reference'] / med['fused']:>15.2f}x")
    print(f"options: {' '.join(args.extra) or '(defaults)'}; 1-min load {os.getloadavg()[0]:.2f} after")


if __name__ == "__main__":
    main()
