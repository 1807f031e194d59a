"""Interleaved A/B of crnn bench (fused, target shape, 1 thread): dispatched avx512 vs the old -march=native build.

Usage: python ab.py ROUNDS. VARIANTS names two `crnn` executables: this branch (editable
install, dispatching build) and a venv with a wheel of main before issue 13 (built with
-march=native), which reuses the first venv's packages through a .pth file. Each round runs
both, in alternating order, with --clock cpu and then --clock wall; the ratio is taken
per round (NOTES.md here).
"""
import json, os, statistics, subprocess, sys
VARIANTS = {"dispatch": "/work/wt-wheel/.venv/bin/crnn", "native": "/tmp/wb/venvB/bin/crnn"}
BASE = ["bench", "--batch", "128", "--length", "11", "--hidden", "50", "--inner-steps", "1", "--backend", "fused",
        "--repeats", "30", "--warmup", "5", "--threads", "1", "--json"]
rounds = int(sys.argv[1])
res = {(v, c, m): [] for v in VARIANTS for c in ("cpu", "wall") for m in ("forward", "forward+backward")}
paths = {}
print("load before", os.getloadavg())
for r in range(rounds):
    order = list(VARIANTS) if r % 2 == 0 else list(VARIANTS)[::-1]
    for clock in ("cpu", "wall"):
        for v in order:
            out = subprocess.run([VARIANTS[v], *BASE, "--clock", clock], capture_output=True, text=True, cwd="/tmp").stdout
            d = json.loads(out)
            paths[v] = d["backends"]["fused"]
            for rec in d["records"]:
                res[(v, clock, rec["mode"])].append(rec["median_ms"])
print("load after", os.getloadavg())
print(json.dumps(paths, indent=1))
for clock in ("cpu", "wall"):
    for m in ("forward", "forward+backward"):
        a, b = res[("dispatch", clock, m)], res[("native", clock, m)]
        ratios = [x / y for x, y in zip(a, b)]
        q = lambda s: statistics.quantiles(s, n=4, method="inclusive")
        print(f"{clock:4s} {m:17s} dispatch median {statistics.median(a):.3f} ms (min {min(a):.3f}, max {max(a):.3f}) | "
              f"native median {statistics.median(b):.3f} ms (min {min(b):.3f}, max {max(b):.3f}) | "
              f"ratio dispatch/native per round median {statistics.median(ratios):.3f} (IQR {q(ratios)[0]:.3f}-{q(ratios)[2]:.3f}, min {min(ratios):.3f}, max {max(ratios):.3f})")
