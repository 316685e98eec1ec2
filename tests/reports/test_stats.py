"""The shared statistics, checked against values worked out by hand (and by brute force where noted)."""

from __future__ import annotations

import itertools
import math

import pytest

from reports import stats


class TestPercentile:
    def test_nearest_rank_textbook(self) -> None:
        # Wikipedia's nearest-rank example: {15, 20, 35, 40, 50}
        values = [50, 15, 40, 20, 35]
        assert stats.percentile(values, 5) == 15
        assert stats.percentile(values, 30) == 20
        assert stats.percentile(values, 40) == 20
        assert stats.percentile(values, 50) == 35
        assert stats.percentile(values, 100) == 50

    def test_zero_is_minimum_and_ranks_are_exact(self) -> None:
        values = list(range(1, 21))  # 1..20
        assert stats.percentile(values, 0) == 1
        assert stats.percentile(values, 95) == 19  # rank ceil(0.95*20)=19, not 20 from float error
        assert stats.percentile(values, 99) == 20

    @pytest.mark.parametrize("q", [-1, 100.5, float("nan")])
    def test_rejects_bad_q(self, q: float) -> None:
        with pytest.raises(ValueError, match="q must lie"):
            stats.percentile([1.0], q)

    def test_rejects_empty_and_nan(self) -> None:
        with pytest.raises(ValueError, match="at least one value"):
            stats.percentile([], 50)
        with pytest.raises(ValueError, match="finite"):
            stats.percentile([1.0, float("nan")], 50)


def test_summarize_hand_computed() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    s = stats.summarize(values)
    assert s == {"mean": 50.5, "p50": 50.0, "p95": 95.0, "p99": 99.0, "n": 100}


def test_median_and_mad() -> None:
    assert stats.median([3, 1, 2]) == 2
    assert stats.median([4, 1, 3, 2]) == 2.5
    # deviations from median 2: |1-2|,|1-2|,0,|2-2|,|4-2|,|6-2|,|9-2| -> 1,1,0,0,2,4,7 -> median 1
    assert stats.mad([1, 1, 2, 2, 4, 6, 9]) == 1.0
    assert stats.mad([1, 1, 2, 2, 4, 6, 9], scale=1.4826) == pytest.approx(1.4826)


class TestBootstrap:
    def test_constant_data_gives_a_point(self) -> None:
        assert stats.bootstrap_ci([5.0] * 10) == (5.0, 5.0)

    def test_reproducible_and_brackets_the_median(self) -> None:
        values = [float(v) for v in [12, 15, 11, 14, 13, 30, 12, 13, 14, 12, 16, 13]]
        lo, hi = stats.bootstrap_ci(values, seed=3)
        assert (lo, hi) == stats.bootstrap_ci(values, seed=3)
        assert lo <= stats.median(values) <= hi
        assert lo >= min(values) and hi <= max(values)
        # a narrower confidence level cannot give a wider interval
        lo80, hi80 = stats.bootstrap_ci(values, confidence=0.8, seed=3)
        assert lo <= lo80 and hi80 <= hi

    def test_custom_stat_matches_vectorised_path(self) -> None:
        values = [1.0, 2.0, 3.0, 10.0, 4.0, 5.0]
        fast = stats.bootstrap_ci(values, stat=stats.mean, n_resamples=500)
        slow = stats.bootstrap_ci(values, stat=lambda v: sum(v) / len(v), n_resamples=500)
        assert fast == pytest.approx(slow)

    def test_rejects_bad_confidence(self) -> None:
        with pytest.raises(ValueError, match="confidence"):
            stats.bootstrap_ci([1.0, 2.0], confidence=1.0)


def _brute_force_exact_p(a: list[float], b: list[float]) -> float:
    """Two-sided exact p by enumerating every split of the pooled values (no ties)."""
    pooled = a + b
    n1 = len(a)

    def u_of(first: tuple[float, ...]) -> float:
        rest = list(pooled)
        for v in first:
            rest.remove(v)
        return sum(1.0 for x in first for y in rest if x > y)

    us = [u_of(c) for c in itertools.combinations(pooled, n1)]
    u_obs = u_of(tuple(a))
    k = min(u_obs, len(a) * len(b) - u_obs)
    return min(1.0, 2 * sum(1 for u in us if u <= k) / len(us))


class TestMannWhitney:
    def test_complete_separation_exact(self) -> None:
        # U = 0; P(U <= 0) = 1 / C(6,3) = 1/20; two-sided p = 0.1
        u, p = stats.mann_whitney_u([1, 2, 3], [4, 5, 6])
        assert u == 0
        assert p == pytest.approx(0.1)
        u, p = stats.mann_whitney_u([4, 5, 6], [1, 2, 3])
        assert u == 9
        assert p == pytest.approx(0.1)

    def test_exact_matches_brute_force(self) -> None:
        a = [1.1, 4.2, 3.3, 8.4, 0.5]
        b = [2.6, 5.7, 6.8, 7.9, 9.1, 10.2]
        u, p = stats.mann_whitney_u(a, b)
        # pairs with a > b: 4.2>2.6, 3.3>2.6, 8.4>{2.6,5.7,6.8,7.9} -> 6
        assert u == 6
        assert p == pytest.approx(_brute_force_exact_p(a, b))

    def test_normal_approximation_with_ties_by_hand(self) -> None:
        a = [1, 2, 2, 3]
        b = [2, 3, 4, 5]
        # pooled ranks: 1->1, 2 (x3)->3, 3 (x2)->5.5, 4->7, 5->8; R_a = 1+3+3+5.5 = 12.5
        # U_a = 12.5 - 10 = 2.5; mu = 8; tie term = (27-3 + 8-2)/(8*7) = 30/56
        # var = 16/12 * (9 - 30/56); z = (13.5 - 8 - 0.5)/sqrt(var)
        u, p = stats.mann_whitney_u(a, b)
        assert u == 2.5
        var = 16 / 12 * (9 - 30 / 56)
        z = 5.0 / math.sqrt(var)
        assert p == pytest.approx(math.erfc(z / math.sqrt(2)))
        # var = 11.286, z = 1.488 -> p = 2 * 0.0683
        assert p == pytest.approx(0.1367, abs=1e-4)

    def test_large_samples_use_normal_approximation(self) -> None:
        a = [float(i) for i in range(30)]
        b = [float(i) + 0.5 for i in range(30)]
        u, p = stats.mann_whitney_u(a, b)
        # a_i > b_j iff i > j: sum_{i} i = 435
        assert u == 435
        z = (465 - 450 - 0.5) / math.sqrt(30 * 30 * 61 / 12)
        assert p == pytest.approx(math.erfc(z / math.sqrt(2)))

    def test_all_equal_is_p_one(self) -> None:
        assert stats.mann_whitney_u([1, 1, 1], [1, 1]) == (3.0, 1.0)


class TestUnstable:
    def test_stable(self) -> None:
        assert stats.is_unstable([10.0, 10.2, 9.9, 10.1]) == (False, "")

    def test_too_few(self) -> None:
        unstable, why = stats.is_unstable([1.0, 1.0])
        assert unstable and "only 2 value" in why

    def test_high_cv(self) -> None:
        unstable, why = stats.is_unstable([10.0, 14.0, 8.0, 12.0])
        assert unstable and "standard deviation" in why

    def test_outlier_max(self) -> None:
        # std/mean = 8.06%, below 10%, but the max is 60% above the median... needs many values
        values = [10.0] * 40 + [16.0]
        unstable, why = stats.is_unstable(values)
        assert unstable and "maximum is 60% above the median" in why

    def test_outlier_min(self) -> None:
        values = [10.0] * 40 + [4.0]
        unstable, why = stats.is_unstable(values)
        assert unstable and "minimum is 60% below" in why


def test_aggregate() -> None:
    agg = stats.aggregate([3.0, 1.0, 2.0])
    assert agg["median"] == 2.0 and agg["mad"] == 1.0
    assert agg["min"] == 1.0 and agg["max"] == 3.0 and agg["n"] == 3
    assert agg["unstable"] is True  # cv = 50%
