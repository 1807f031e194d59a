"""crnn_core.experiments.stats (bootstrap intervals, Mann-Whitney U) and the study measures of crnn_plugins.experiments.study, on known values."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from crnn_core.experiments.stats import bootstrap_ci, format_ci, mann_whitney_u, rank_with_ties
from crnn_plugins.tasks.lcd import lcd_curve
from crnn_plugins.experiments.study import dominant_period, error_curves, reached


def test_exact_u_and_p_by_hand():
    # x entirely below y: U = 0; only 1 of the C(6, 3) = 20 orderings is as extreme on each side
    test = mann_whitney_u([1, 2, 3], [4, 5, 6])
    assert (test.u, test.method) == (0.0, "exact") and test.p == pytest.approx(0.1)
    # U = 3 of x = [1, 2, 3, 7] against [4, 5, 6]: P(U <= 3) = (1 + 1 + 2 + 3) / 35
    test = mann_whitney_u([1, 2, 3, 7], [4, 5, 6])
    assert test.u == 3.0 and test.p == pytest.approx(2 * 7 / 35)
    # symmetric: the other sample's U is n1 n2 - U, same p
    other = mann_whitney_u([4, 5, 6], [1, 2, 3, 7])
    assert other.u == 9.0 and other.p == pytest.approx(test.p)


def test_normal_approximation_with_ties_by_hand():
    # ranks of [1,2,2,3 | 2,5,6]: 1, 3, 3, 5 | 3, 6, 7 -> U = 12 - 10 = 2; ties {2: 3}
    test = mann_whitney_u([1, 2, 2, 3], [2, 5, 6])
    var = 4 * 3 / 12 * ((7 + 1) - (27 - 3) / (7 * 6))
    z = (abs(2 - 6) - 0.5) / math.sqrt(var)
    assert (test.u, test.method) == (2.0, "normal")
    assert test.p == pytest.approx(math.erfc(z / math.sqrt(2)))


def test_never_reached_ranks_last_and_all_tied_gives_p_one():
    inf = math.inf
    assert mann_whitney_u([inf, inf], [inf, inf]).p == 1.0
    fast, slow = mann_whitney_u([3, 4, 5, 6, 7], [inf] * 5), mann_whitney_u([inf] * 5, [3, 4, 5, 6, 7])
    assert fast.u == 0.0 and slow.u == 25.0 and fast.p == pytest.approx(slow.p) and fast.p < 0.01
    with pytest.raises(ValueError, match="at least one value"):
        mann_whitney_u([], [1.0])


def test_ranks_average_ties():
    ranks, sizes = rank_with_ties(np.array([10.0, 20.0, 10.0, 30.0]))
    assert ranks.tolist() == [1.5, 3.0, 1.5, 4.0] and sorted(sizes.tolist()) == [1, 1, 2]


def test_against_scipy_when_installed():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for n1, n2, ties in [(5, 5, False), (4, 7, False), (12, 25, False), (6, 6, True)]:
        x, y = rng.normal(size=n1), rng.normal(0.5, size=n2)
        if ties:
            x, y = np.round(x), np.round(y)
        ref = stats.mannwhitneyu(x, y, alternative="two-sided")
        got = mann_whitney_u(x, y)
        assert got.u == pytest.approx(ref.statistic) and got.p == pytest.approx(ref.pvalue, rel=1e-6)


def test_bootstrap_interval():
    assert bootstrap_ci([]) is None and bootstrap_ci([4.0]) == (4.0, 4.0)
    lo, hi = bootstrap_ci([1, 2, 3, 4, 5])
    assert 1.0 <= lo < 3.0 < hi <= 5.0
    assert bootstrap_ci([1, 2, 3, 4, 5]) == (lo, hi), "deterministic"
    # a wide sample of a normal: the interval of the mean is about 2 * 1.96 / sqrt(n) wide
    values = np.random.default_rng(1).normal(size=400)
    lo, hi = bootstrap_ci(values)
    assert hi - lo == pytest.approx(2 * 1.96 / 20, rel=0.15) and lo < values.mean() < hi
    assert format_ci([]) == "—" and format_ci([2.0]) == "2" and format_ci([1, 3]).startswith("2 [")


def test_epochs_to_threshold_and_error_curves():
    records = [{"epoch": e, "step": 10 * e, "metrics": {"accuracy": a}} for e, a in [(1, 0.5), (2, 0.995), (3, 1.0)]]
    assert reached(records, 0.99) == (2, 20) and reached(records, 1.0) == (3, 30) and reached(records[:2], 1.0) is None
    epochs, curves = error_curves([records, records[:2]])
    assert epochs.tolist() == [1, 2, 3]
    assert curves[0].tolist() == pytest.approx([0.5, 0.005, 0.0])
    assert curves[1].tolist() == pytest.approx([0.5, 0.005, 0.005]), "a run that ended keeps its last value"


@pytest.mark.parametrize("period", [0.5, 1.0, 2.0, 3.0, 4.5])
def test_dominant_period_recovers_the_true_curve(period):
    t = torch.arange(26, dtype=torch.float64)
    curve = lcd_curve(torch.tensor([3.0], dtype=torch.float64), torch.tensor([period], dtype=torch.float64), t, 26.0)
    assert dominant_period(curve[0].numpy(), 26.0) == pytest.approx(period, abs=0.006)
    # noise (sd 0.05 against an amplitude of 3) moves it little from a full cycle on (half a
    # cycle, T = 0.5, is too short to tell from the trend under noise)
    noisy = curve[0].numpy() + np.random.default_rng(0).normal(0, 0.05, 26)
    if period >= 1.0:
        assert dominant_period(noisy, 26.0) == pytest.approx(period, abs=0.15)
    other = lcd_curve(torch.tensor([3.0], dtype=torch.float64), torch.tensor([period + 1.0], dtype=torch.float64), t, 26.0)
    assert abs(dominant_period(other[0].numpy(), 26.0) - period) > 0.9
