"""Small statistics for experiment reports: bootstrap intervals over seeds and the Mann-Whitney U test.

numpy only (no scipy dependency). ``mann_whitney_u`` is two-sided: the exact null
distribution of U when there are no ties and both samples are small (n1 + n2 <= 30), else
the normal approximation with the tie correction and a continuity correction (as
``scipy.stats.mannwhitneyu(..., method="auto")`` does). Values may be ``inf`` (e.g. "never
reached 100%"): they rank last, tied with each other.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

#: Largest n1 + n2 for which the exact null distribution is used (absent ties).
EXACT_LIMIT = 30


@dataclass(frozen=True)
class UTest:
    """Result of :func:`mann_whitney_u`: U of the first sample, the two-sided p-value and the method used."""

    u: float
    p: float
    method: str  # "exact" or "normal"


def summary(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation (0 for one value), min, max and count of ``values`` (not empty)."""
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return {"mean": mean, "std": std, "min": min(values), "max": max(values), "n": len(values)}


def bootstrap_ci(values: Sequence[float], level: float = 0.95, n_boot: int = 10_000, seed: int = 0,
                 stat: Callable[[np.ndarray], float] = np.mean) -> tuple[float, float] | None:
    """Percentile bootstrap interval of ``stat`` over ``values`` (resampled with replacement).

    None for no values; a single value gives a zero-width interval. Deterministic for a seed.
    """
    x = np.asarray(list(values), dtype=float)
    if x.size == 0:
        return None
    if x.size == 1:
        return float(x[0]), float(x[0])
    rng = np.random.default_rng(seed)
    samples = x[rng.integers(0, x.size, size=(n_boot, x.size))]
    stats = np.apply_along_axis(stat, 1, samples) if stat is not np.mean else samples.mean(axis=1)
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(stats, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def rank_with_ties(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average ranks (1-based) of ``values`` and the sizes of the tie groups."""
    order = np.argsort(values, kind="mergesort")
    sorted_v = values[order]
    ranks = np.empty(values.size, dtype=float)
    sizes = []
    i = 0
    while i < values.size:
        j = i
        while j + 1 < values.size and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        sizes.append(j - i + 1)
        i = j + 1
    return ranks, np.asarray(sizes)


def _exact_cdf(n1: int, n2: int) -> np.ndarray:
    """P(U <= u) for u = 0 .. n1*n2 under the null (no ties), by the counting recurrence."""
    # counts[m][v]: arrangements of m first-sample and k second-sample items with U = v, built up over k
    counts = [np.zeros(1, dtype=float) for _ in range(n1 + 1)]
    for m in range(n1 + 1):
        counts[m] = np.ones(1)  # k = 0: U = 0 in exactly one way
    for k in range(1, n2 + 1):
        new = [np.ones(1)]  # m = 0: U = 0
        for m in range(1, n1 + 1):
            # the largest item is from sample 2 (U unchanged) or from sample 1 (U += k)
            a, b = counts[m], new[m - 1]
            size = m * k + 1
            row = np.zeros(size)
            row[: a.size] += a
            row[k: k + b.size] += b
            new.append(row)
        counts = new
    dist = counts[n1]
    return np.cumsum(dist) / dist.sum()


def mann_whitney_u(x: Sequence[float], y: Sequence[float]) -> UTest:
    """Two-sided Mann-Whitney U test of ``x`` against ``y``; ``u`` is U of ``x`` (pairs x > y, ties count 1/2)."""
    a, b = np.asarray(list(x), dtype=float), np.asarray(list(y), dtype=float)
    n1, n2 = a.size, b.size
    if n1 == 0 or n2 == 0:
        raise ValueError("mann_whitney_u needs at least one value in each sample")
    ranks, ties = rank_with_ties(np.concatenate([a, b]))
    u = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2.0)
    has_ties = bool((ties > 1).any())
    if not has_ties and n1 + n2 <= EXACT_LIMIT:
        cdf = _exact_cdf(n1, n2)
        k = int(round(u))
        lower = cdf[k]
        upper = 1.0 - (cdf[k - 1] if k > 0 else 0.0)
        return UTest(u, float(min(1.0, 2.0 * min(lower, upper))), "exact")
    n = n1 + n2
    mu = n1 * n2 / 2.0
    var = n1 * n2 / 12.0 * ((n + 1) - float((ties**3 - ties).sum()) / (n * (n - 1)))
    if var <= 0:
        return UTest(u, 1.0, "normal")
    z = max(abs(u - mu) - 0.5, 0.0) / math.sqrt(var)
    return UTest(u, float(math.erfc(z / math.sqrt(2.0))), "normal")


def format_ci(values: Sequence[float], digits: int = 4) -> str:
    """``mean [lo, hi]`` (95% bootstrap interval) for a table cell; ``—`` when empty."""
    values = list(values)
    ci = bootstrap_ci(values)
    if ci is None:
        return "—"
    mean = float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.{digits}g}"
    return f"{mean:.{digits}g} [{ci[0]:.{digits}g}, {ci[1]:.{digits}g}]"
