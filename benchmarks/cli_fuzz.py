#!/usr/bin/env python
"""CLI fuzzing (docs/reliability.md): a few hundred ``crnn`` invocations with random and edge
values for every option of every command; counts internal errors (exit 1) and crashes (signal exits,
tracebacks, refusals that are not one line). Target: zero of both. Not part of the test suite.

    python benchmarks/cli_fuzz.py /tmp/fuzz 300 0      # directory, invocations, seed  (~6 min on 2 cores)

Each invocation replaces one option of a valid tiny command (or adds one ``--set scope.key=VALUE``
for every option ``crnn list --options --json`` declares) with an edge value: empty, zero,
negative, huge (sizes that cannot fit in memory too), NaN/inf, unicode, a missing file, an unknown
name. Prints JSON: the counts per class (see benchmarks/adversary.py), every internal error, crash,
timeout and memory blow-up with its arguments, and every accepted invocation (to be judged by reading).
"""
from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from adversary import ENV, PY, TINY, crnn, run_all, summary  # noqa: E402

EDGE = ["", " ", "0", "-1", "1", "2.5", "1e30", "-1e30", "nan", "inf", "-inf", "99999999999999999999999",
        str(2**63), str(-2**63), "0x10", "1_000", "true", "none", "héllo∂", "☃", "a" * 300, "../..", "/nonexistent/x",
        "x=y", "--help", "cell.x=1", str(2**80), "9" * 5000, "30000", "10000000"]

ROOT = Path(sys.argv[1]).resolve()
N = int(sys.argv[2]) if len(sys.argv) > 2 else 300
random.seed(int(sys.argv[3]) if len(sys.argv) > 3 else 0)


def setup() -> tuple[Path, Path]:
    """A finished tiny ART run (plot, --resume) and a finished tiny LCD run that can sample."""
    shutil.rmtree(ROOT, ignore_errors=True)
    ROOT.mkdir(parents=True)
    art, lcd = ROOT / "art", ROOT / "lcd"
    for out, args in ((art, ["--task", "art", *TINY]),
                      (lcd, ["--task", "lcd", "--cell", "lstm", "--init", "learned", "--set", "init.distribution=normal",
                             "--set", "task.train_per_period=20", "--set", "task.val_per_period=10",
                             "--set", "train.threads=1", "--epochs", "1", "-q"])):
        r = subprocess.run([PY, "-m", "crnn_core", "run", *args, "--out", str(out)], env=ENV, capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr
    return art, lcd


def option_keys() -> list[str]:
    """Every ``scope.key`` of every registered component and of ``train``."""
    r = subprocess.run([PY, "-m", "crnn_core", "list", "--options", "--json"], env=ENV, capture_output=True, text=True)
    doc = json.loads(r.stdout)
    scope = {"cells": "cell", "inits": "init", "contexts": "context", "tasks": "task"}
    keys = {f"train.{o['name']}" for o in doc.get("train", [])}
    for plural, entries in doc.items():
        if plural in scope:
            keys |= {f"{scope[plural]}.{o['name']}" for e in entries for o in e["options"]}
    return sorted(keys)


def cases(art: Path, lcd: Path, keys: list[str]) -> list[list[str]]:
    """Valid commands, each with one option replaced by an edge value."""
    runs = ["run", "--out", str(ROOT / "out"), "--force", *TINY]
    templates: dict[str, tuple[list[str], list[str]]] = {
        # command: (valid base, options to mutate)
        "run": (runs, ["--cell", "--init", "--task", "--context", "--epochs", "--batch-size", "--lr", "--seed",
                       "--device", "--out", "--resume"]),
        "sample": (["sample", str(lcd), "--period", "2", "--x0", "3"],
                   ["-n", "--steps", "--seed", "--out", "--checkpoint", "--device", "--period", "--x0", "--param"]),
        "plot": (["plot", str(art), "--no-png"], ["--metric", "--out", "--spread", "--title"]),
        "reproduce": (["reproduce", "art", "--seeds", "1", "--epochs", "1", "--out", str(ROOT / "grid"),
                       "--set", "task.train_size=64", "--set", "task.val_size=32", "--inits", "zero"],
                      ["--seeds", "--epochs", "--inits", "--out", "--jobs", "--set"]),
        "bench": (["bench", "--batch", "2", "--length", "3", "--hidden", "4", "--repeats", "1", "--warmup", "0", "-q",
                   "--backend", "reference"],
                  ["--batch", "--length", "--hidden", "--inner-steps", "--backend", "--mode", "--device", "--dtype",
                   "--repeats", "--warmup", "--threads", "--seed", "--max-naive-gb", "--max-compiled-length",
                   "--clock"]),
        "list": (["list"], ["--options"]),
    }
    result = []
    for n in range(N):
        runs[2] = templates["run"][0][2] = str(ROOT / f"out{n}")  # one run directory per invocation
        command = random.choice([*templates, "set", "set", "set", "positional"])
        value = random.choice(EDGE)
        if command == "set":
            result.append([*runs, "--set", f"{random.choice(keys)}={value}"])
            continue
        elif command == "positional":
            result.append([random.choice(["sample", "plot", "list", "reproduce"]), value])
        else:
            base, options = templates[command]
            option = random.choice(options)
            args = list(base)
            if option in args:
                i = args.index(option)
                args[i + 1:i + 2] = [value]
            else:
                args += [option, value]
            result.append(args)
    return result


def main() -> None:
    art, lcd = setup()
    outcomes = run_all(cases(art, lcd, option_keys()), ROOT, jobs=2, timeout=90)
    accepted = [" ".join(a if len(a) < 60 else a[:20] + f"...({len(a)} chars)" for a in o.args)
                for o in outcomes if o.kind == "ok"]
    print(json.dumps({"command": " ".join(sys.argv), **summary(outcomes), "accepted": accepted}, indent=1))


if __name__ == "__main__":
    main()
