"""The grid medians of compiled/fused over every `crnn bench` table in this folder.

    python benchmarks/results/grid_compiled_2026-11-27/medians.py
"""
import pathlib
import statistics

here = pathlib.Path(__file__).parent
ratios: dict[str, list[float]] = {"fwd": [], "fwd+bwd": []}
points = set()
for path in sorted(here.glob("*.txt")):
    for line in path.read_text().splitlines():
        cols = line.split()
        if len(cols) >= 8 and cols[0].isdigit() and cols[4] in ratios and cols[7].endswith("x"):
            ratios[cols[4]].append(float(cols[7][:-1]))
            points.add(tuple(cols[:4]))
for mode, values in ratios.items():
    below = sum(v < 2 for v in values)
    print(f"{mode:8s} compiled/fused: median {statistics.median(values):.2f}x over {len(values)} points "
          f"(range {min(values):.2f}-{max(values):.2f}x; {below} below 2x)")
print(f"{len(points)} (B, T, H, S) points")
