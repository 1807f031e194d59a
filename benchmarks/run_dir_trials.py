#!/usr/bin/env python
"""Adversary trials of the run directory (docs/reliability.md): signals and kill -9 at random moments,
concurrent writers. Not part of the test suite (minutes, and random by design); prints JSON figures.

    python benchmarks/run_dir_trials.py /tmp/trials 10 3 0.6   # directory, trials per kind, seed, fraction

Each interruption trial starts a 4-epoch ART run, signals it (kill -9; SIGTERM; SIGINT twice)
after a uniformly random delay within ``fraction`` of the reference run's duration -- start-up, data
generation, training and checkpoint writes included -- then finishes it with the one
obvious command (``--resume`` when last.pt or a metrics record exists, else the same command again) and
compares metrics.jsonl (less wall_time) and best.pt's weights with the run left alone.
The concurrency trials start two ``--resume`` (or two ``--force`` runs into one ``--out``)
at once and count how often the second is refused naming the first one's pid.
"""
import json, os, random, signal, subprocess, sys, time, shutil
from pathlib import Path
import torch

PY = sys.executable
ARGS = ["--cell", "fastweights", "--init", "learned", "--task", "art", "--epochs", "4", "--seed", "3", "-q",
        "--set", "task.train_size=256", "--set", "task.val_size=128", "--batch-size", "16",
        "--set", "cell.backend=reference", "--set", "train.threads=1"]
ENV = dict(os.environ, CRNN_NO_PLUGINS="1")
ROOT = Path(sys.argv[1]); ROOT.mkdir(parents=True, exist_ok=True)
N = int(sys.argv[2]) if len(sys.argv) > 2 else 10
random.seed(int(sys.argv[3]) if len(sys.argv) > 3 else 0)
FRACTION = float(sys.argv[4]) if len(sys.argv) > 4 else 1.0  # signal within this fraction of the reference duration

def crnn(*a, **kw):
    return subprocess.run([PY, "-m", "crnn_core", *a], env=ENV, capture_output=True, text=True, timeout=600, **kw)

def metrics(out):
    return [{k: v for k, v in json.loads(l).items() if k != "wall_time"} for l in (out / "metrics.jsonl").read_text().splitlines()]

def best_model(out):
    c = torch.load(out / "checkpoints" / "best.pt", weights_only=True)
    return c["epoch"], c["model"]

ref = ROOT / "ref"
shutil.rmtree(ref, ignore_errors=True)
t0 = time.monotonic(); r = crnn("run", *ARGS, "--out", str(ref)); total = time.monotonic() - t0
assert r.returncode == 0, r.stderr
REF_M, (REF_BE, REF_BM) = metrics(ref), best_model(ref)

def finish(out):
    """The one obvious command: --resume if a checkpoint or a metrics record exists (a run killed between
    its first record and its first checkpoint restarts), else the same command again (it says which)."""
    steps = []
    for _ in range(3):
        records = (out / "metrics.jsonl").exists() and '"epoch"' in (out / "metrics.jsonl").read_text()
        if (out / "checkpoints" / "last.pt").exists() or records:
            r = crnn("run", "--resume", str(out), "-q")
        else:
            r = crnn("run", *ARGS, "--out", str(out))
        steps.append(r.returncode)
        if r.returncode == 0:
            return steps, r
    return steps, r

def identical(out):
    if metrics(out) != REF_M: return False
    be, bm = best_model(out)
    return be == REF_BE and all(torch.equal(bm[k], REF_BM[k]) for k in REF_BM)

results = {"reference_seconds": round(total, 1)}
for kind in ("SIGKILL", "SIGTERM", "SIGINT-twice"):
    ok, codes, tracebacks, extra_lines = 0, {}, 0, 0
    for i in range(N):
        out = ROOT / f"{kind}-{i}"; shutil.rmtree(out, ignore_errors=True)
        p = subprocess.Popen([PY, "-m", "crnn_core", "run", *ARGS, "--out", str(out)], env=ENV,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(random.uniform(0, total * FRACTION))
        if kind == "SIGKILL": p.kill()
        elif kind == "SIGTERM": p.send_signal(signal.SIGTERM)
        else:
            p.send_signal(signal.SIGINT); time.sleep(random.uniform(0, 0.05)); p.send_signal(signal.SIGINT)
        so, se = p.communicate()
        codes[p.returncode] = codes.get(p.returncode, 0) + 1
        tracebacks += "Traceback" in se
        if kind != "SIGKILL" and p.returncode != 0:
            extra_lines += len([l for l in se.strip().splitlines() if l]) != 1
        steps, r = finish(out)
        good = r.returncode == 0 and identical(out) and not list(out.rglob(".*.tmp"))
        ok += good
        if not good: print(kind, i, steps, r.stderr[-500:], file=sys.stderr)
    results[kind] = {"trials": N, "bit_identical_after_resume": ok, "exit_codes": codes, "tracebacks": tracebacks,
                     "not_one_line": extra_lines}

# concurrent writers: two --resume at once, and two --force into one --out
refused = both = interleaved = 0
for i in range(N):
    out = ROOT / f"conc-{i}"; shutil.rmtree(out, ignore_errors=True)
    assert crnn("run", *ARGS, "--epochs", "1", "--out", str(out)).returncode == 0
    if i % 2 == 0:
        cmds = [["run", "--resume", str(out), "-q", "--epochs", "6"]] * 2
    else:
        cmds = [["run", *ARGS, "--epochs", "3", "--force", "--out", str(out)]] * 2
    ps = [subprocess.Popen([PY, "-m", "crnn_core", *c], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in cmds]
    outs = [p.communicate() for p in ps]
    rcs = sorted(p.returncode for p in ps)
    pids = [p.pid for p in ps]
    if rcs == [0, 2] and any(f"(pid {pid})" in se for (so, se), pid in zip(outs, reversed(pids))):
        refused += 1
    elif rcs == [0, 0]:
        both += 1
    epochs = [json.loads(l)["epoch"] for l in (out / "metrics.jsonl").read_text().splitlines()]
    interleaved += epochs != sorted(epochs) or len(epochs) != len(set(epochs))
results["concurrent_writers"] = {"trials": N, "second_refused_naming_pid": refused, "ran_one_after_the_other": both,
                                 "interleaved_metrics": interleaved}
print(json.dumps(results))
