"""Statistics shared by ``harness/`` (aggregates, regression check) and ``reports/`` (tables, figures).

Every function is pure: it takes plain sequences of numbers, returns plain numbers, and never mutates its
input. Each docstring names the method, so a number in a report can be traced to how it was computed.
Empty input raises ``ValueError`` (there is no honest value to return); ``None`` is never accepted as a
value — callers drop missing measurements first, and say how many they dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

__all__ = [
    "Values",
    "aggregate",
    "bootstrap_ci",
    "is_unstable",
    "mad",
    "mann_whitney_u",
    "mean",
    "median",
    "percentile",
    "summarize",
]

#: What every function accepts: a sequence of numbers or a 1-D numpy array.
Values: TypeAlias = "Sequence[float] | npt.NDArray[Any]"

#: pyperf warns when the standard deviation exceeds 10 % of the mean; so do we.
DEFAULT_MAX_CV = 0.10
#: pyperf warns when the minimum or maximum lies more than 50 % away from the centre.
DEFAULT_MAX_OUTLIER = 0.50
#: Fewer values than this cannot show whether a measurement is stable.
DEFAULT_MIN_VALUES = 3
#: Up to this many values per sample (and no ties) the Mann-Whitney p-value is exact, not approximated.
EXACT_MWU_MAX_N = 20


def _as_array(values: Values, what: str) -> npt.NDArray[np.float64]:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{what} needs a flat sequence of numbers, got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{what} needs at least one value, got none")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} needs finite numbers, got NaN or infinity")
    return arr


def percentile(values: Values, q: float) -> float:
    """The q-th percentile (0 ≤ q ≤ 100) by the nearest-rank method: the value at rank ⌈q/100 · n⌉.

    It always returns one of the measured values (no interpolation), which is what latency tables want.
    q = 0 gives the minimum.
    """
    if not 0.0 <= q <= 100.0 or math.isnan(q):
        raise ValueError(f"percentile q must lie in [0, 100], got {q}")
    arr = np.sort(_as_array(values, "percentile()"))
    rank = max(1, math.ceil(q / 100.0 * arr.size - 1e-9))
    return float(arr[rank - 1])


def mean(values: Values) -> float:
    """Arithmetic mean."""
    return float(np.mean(_as_array(values, "mean()")))


def median(values: Values) -> float:
    """Median: the middle value, or the mean of the two middle values when n is even."""
    return float(np.median(_as_array(values, "median()")))


def mad(values: Values, *, scale: float = 1.0) -> float:
    """Median absolute deviation from the median, times ``scale``.

    The raw MAD (scale 1) is reported by default; pass ``scale=1.4826`` for a consistent estimator of the
    standard deviation of normally distributed data.
    """
    arr = _as_array(values, "mad()")
    return float(scale * np.median(np.abs(arr - np.median(arr))))


def summarize(values: Values) -> dict[str, float | int]:
    """``{"mean", "p50", "p95", "p99", "n"}``: arithmetic mean and nearest-rank percentiles."""
    arr = _as_array(values, "summarize()")
    return {
        "mean": float(np.mean(arr)),
        "p50": percentile(arr, 50),
        "p95": percentile(arr, 95),
        "p99": percentile(arr, 99),
        "n": int(arr.size),
    }


def bootstrap_ci(
    values: Values,
    stat: Callable[[Sequence[float]], float] = median,
    confidence: float = 0.95,
    n_resamples: int = 2000,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of ``stat`` (default: the median).

    Draws ``n_resamples`` resamples with replacement (numpy PCG64 seeded by ``seed``, so the interval is
    reproducible), computes ``stat`` on each, and returns the nearest-rank (1−c)/2 and (1+c)/2
    percentiles of those statistics.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    arr = _as_array(values, "bootstrap_ci()")
    rng = np.random.default_rng(seed)
    samples = arr[rng.integers(0, arr.size, size=(n_resamples, arr.size))]
    if stat is median:  # same definition, vectorised
        stats = np.median(samples, axis=1)
    elif stat is mean:
        stats = np.mean(samples, axis=1)
    else:
        stats = np.array([float(stat(row.tolist())) for row in samples])
    alpha = (1.0 - confidence) / 2.0
    return percentile(stats, 100.0 * alpha), percentile(stats, 100.0 * (1.0 - alpha))


def _normal_sf(z: float) -> float:
    """Upper tail of the standard normal distribution, P(Z > z)."""
    return 0.5 * math.erfc(z / math.sqrt(2.0))


@cache
def _mwu_counts(n1: int, n2: int) -> tuple[int, ...]:
    """Number of orderings of n1 + n2 distinct values giving U = 0 .. n1·n2 (for the exact test).

    Recurrence: the largest value belongs either to sample 1 (it beats all n2 values of sample 2) or to
    sample 2 (it adds nothing to U1): c(n1, n2, u) = c(n1−1, n2, u−n2) + c(n1, n2−1, u).
    """
    if n1 == 0 or n2 == 0:
        return (1,)
    with_first = _mwu_counts(n1 - 1, n2)
    with_second = _mwu_counts(n1, n2 - 1)
    counts = [0] * (n1 * n2 + 1)
    for u, c in enumerate(with_first):
        counts[u + n2] += c
    for u, c in enumerate(with_second):
        counts[u] += c
    return tuple(counts)


def mann_whitney_u(a: Values, b: Values) -> tuple[float, float]:
    """Mann-Whitney U test of a against b: returns (U of ``a``, two-sided p-value).

    U counts the pairs (x in a, y in b) with x > y, ties counting ½ (midranks). Without ties and with
    both samples of at most 20 values, p is exact (the permutation distribution of U); otherwise it uses
    the normal approximation with tie correction of the variance and a continuity correction of ½.
    """
    x = _as_array(a, "mann_whitney_u() sample a")
    y = _as_array(b, "mann_whitney_u() sample b")
    n1, n2 = int(x.size), int(y.size)
    n = n1 + n2
    pooled = np.concatenate([x, y])
    order = np.argsort(pooled, kind="mergesort")
    sorted_vals = pooled[order]
    ranks = np.empty(n, dtype=np.float64)
    _, first, counts = np.unique(sorted_vals, return_index=True, return_counts=True)
    for start, count in zip(first, counts, strict=True):
        ranks[order[start : start + count]] = start + (count + 1) / 2.0  # midrank, 1-based
    u1 = float(ranks[:n1].sum() - n1 * (n1 + 1) / 2.0)
    u2 = n1 * n2 - u1
    has_ties = bool(np.any(counts > 1))

    if not has_ties and max(n1, n2) <= EXACT_MWU_MAX_N:
        dist = _mwu_counts(n1, n2)
        total = sum(dist)
        k = round(min(u1, u2))
        tail = sum(dist[: k + 1]) / total  # P(U <= min(U1, U2)); the distribution is symmetric
        return u1, min(1.0, 2.0 * tail)

    mu = n1 * n2 / 2.0
    tie_term = float(np.sum(counts.astype(np.float64) ** 3 - counts)) / (n * (n - 1)) if n > 1 else 0.0
    var = n1 * n2 / 12.0 * ((n + 1) - tie_term)
    if var <= 0.0:  # every value equal: no evidence of any difference
        return u1, 1.0
    z = (max(u1, u2) - mu - 0.5) / math.sqrt(var)
    return u1, min(1.0, max(0.0, 2.0 * _normal_sf(z)))


def is_unstable(
    values: Values,
    *,
    max_cv: float = DEFAULT_MAX_CV,
    max_outlier: float = DEFAULT_MAX_OUTLIER,
    min_values: int = DEFAULT_MIN_VALUES,
) -> tuple[bool, str]:
    """pyperf-style stability verdict: ``(True, why)`` or ``(False, "")``.

    Rules, in order: fewer than ``min_values`` values; sample standard deviation above ``max_cv`` of the
    mean (coefficient of variation); minimum or maximum more than ``max_outlier`` (relative) away from the
    median.
    """
    if len(values) < min_values:
        return True, f"only {len(values)} value(s); at least {min_values} are needed to judge stability"
    arr = _as_array(values, "is_unstable()")
    centre = float(np.median(arr))
    avg = float(np.mean(arr))
    std = float(np.std(arr, ddof=1)) if arr.size > 1 else 0.0
    if avg == 0.0:
        if std == 0.0:
            return False, ""
        return True, f"mean is 0 but standard deviation is {std:.3g}"
    cv = std / abs(avg)
    if cv > max_cv:
        return True, f"standard deviation is {100 * cv:.1f}% of the mean (limit {100 * max_cv:.0f}%)"
    if centre != 0.0:
        low = (centre - float(arr.min())) / abs(centre)
        high = (float(arr.max()) - centre) / abs(centre)
        if low > max_outlier:
            return True, f"minimum is {100 * low:.0f}% below the median (limit {100 * max_outlier:.0f}%)"
        if high > max_outlier:
            return True, f"maximum is {100 * high:.0f}% above the median (limit {100 * max_outlier:.0f}%)"
    return False, ""


def aggregate(values: Values) -> dict[str, float | int | bool | str]:
    """Spread of one figure across runs, as the results file's ``aggregate`` stores it.

    ``{"median", "mad", "min", "max", "n", "unstable", "unstable_reason"}``: median and raw MAD,
    extremes, count, and the :func:`is_unstable` verdict.
    """
    arr = _as_array(values, "aggregate()")
    unstable, reason = is_unstable(arr.tolist())
    return {
        "median": median(arr),
        "mad": mad(arr),
        "min": float(arr.min()),
        "max": float(arr.max()),
        "n": int(arr.size),
        "unstable": unstable,
        "unstable_reason": reason,
    }
