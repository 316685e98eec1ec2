"""Statistics shared by ``harness/`` (aggregates, regression check) and ``reports/`` (tables, figures).

Every function is pure: it takes plain sequences of numbers, returns plain numbers, and never mutates its
input. Each docstring names the method, so a number in a report can be traced to how it was computed.
Empty input raises ``ValueError`` (there is no honest value to return); ``None`` is never accepted as a
value — callers drop missing measurements first, and say how many they dropped.

Two levels, kept apart. Per-batch statistics (``summarize``, ``bootstrap_ci``, ``mann_whitney_u``)
describe the batches of one run: batches within a run share its machine state, so they are not
independent samples of a configuration and no comparison between configurations may rest on them.
Run-level statistics (``median_ci``, ``paired_ratio_ci``, ``paired_difference_ci`` and their unpaired
forms, ``verdict``) treat the run as the unit of replication and pair two configurations' runs by the
block they ran in, which cancels whatever load that block shared.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

__all__ = [
    "CONTRADICTED",
    "INCONCLUSIVE",
    "MIN_RUNS_FOR_INTERVAL",
    "MIN_RUNS_FOR_VERDICT",
    "NOT_TESTED",
    "SUPPORTED",
    "VERDICTS",
    "Estimate",
    "Expect",
    "Values",
    "aggregate",
    "bootstrap_ci",
    "is_unstable",
    "mad",
    "mann_whitney_u",
    "mean",
    "median",
    "median_ci",
    "paired_difference_ci",
    "paired_ratio_ci",
    "percentile",
    "summarize",
    "unpaired_difference_ci",
    "unpaired_ratio_ci",
    "verdict",
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
    """Percentile-bootstrap confidence interval of ``stat`` (default: the median) of one run's batches.

    Valid only to describe one run: batches of different runs are not exchangeable (see the module
    docstring); across runs use :func:`median_ci`. Draws ``n_resamples`` resamples with replacement (numpy PCG64 seeded by ``seed``, so the interval is
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

    It assumes independent samples, which batches pooled from several runs are not; reports never use
    it to compare configurations (the run-level functions below do).

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


# --- Run-level statistics: the run is the unit of replication --------------------------------------------

SUPPORTED = "supported"
CONTRADICTED = "contradicted"
INCONCLUSIVE = "inconclusive"
NOT_TESTED = "not tested"
VERDICTS = (SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_TESTED)

#: Which side of the null value a claim puts the estimate on (scipy's ``alternative`` words).
Expect: TypeAlias = Literal["greater", "less"]

DEFAULT_CONFIDENCE = 0.95
#: A fifth of scipy's default 9999: a report draws about a thousand intervals, and for the 5-20 runs a
#: study has, the bootstrap distribution of a median sits on a few dozen values, whose 2.5 % and 97.5 %
#: points 1999 resamples place within a few tenths of a percentile. The seed makes them reproducible.
BOOTSTRAP_RESAMPLES = 1999
#: Every interval draws from a generator seeded with this, so a report rebuilt from the same files
#: prints the same intervals.
DEFAULT_SEED = 0
#: Below this many runs a bootstrap "interval" is one of two or three values, not an interval.
MIN_RUNS_FOR_INTERVAL = 3
#: A verdict needs this many runs (or blocks). The percentile interval of a median of n values is close
#: to the order-statistic (sign-test) interval; with 5 values it spans them all, so "supported" means all
#: five agree, which chance alone gives with probability 2⁻⁵ = 3.1 % — about the 2.5 % a one-sided
#: 95 % statement promises. With 3 values chance gives 12.5 %, which no 95 % label may cover.
MIN_RUNS_FOR_VERDICT = 5
#: From this many values on, a median's interval can reach 95 % coverage (the range of n values covers
#: the true median with probability 1 − 2¹⁻ⁿ, 96.9 % at 6).
FULL_COVERAGE_N = 6


@dataclass(frozen=True)
class Estimate:
    """A run-level figure: a point estimate, its confidence interval (None: too few runs for one), the
    number of runs or blocks it rests on, and a one-line note of the method."""

    value: float
    low: float | None
    high: float | None
    n: int
    method: str

    def __post_init__(self) -> None:
        if (self.low is None) != (self.high is None):
            raise ValueError("an estimate has both interval ends or neither")
        if self.low is not None and self.high is not None and not self.low <= self.high:
            raise ValueError(f"interval [{self.low}, {self.high}] is reversed")
        if self.n < 1:
            raise ValueError(f"an estimate rests on at least one value, got n = {self.n}")

    @property
    def interval(self) -> tuple[float, float] | None:
        if self.low is None or self.high is None:
            return None
        return self.low, self.high

    def interval_text(self, fmt: str = ".3g", scale: float = 1.0) -> str | None:
        """``"[0.78, 0.85]"``, or None when there is no interval."""
        iv = self.interval
        return None if iv is None else f"[{iv[0] * scale:{fmt}}, {iv[1] * scale:{fmt}}]"

    def text(self, fmt: str = ".3g", scale: float = 1.0) -> str:
        """``"0.82 [0.78, 0.85]"``, or ``"0.82 (n = 2, no interval)"``."""
        iv = self.interval_text(fmt, scale)
        return f"{self.value * scale:{fmt}} " + (iv if iv is not None else f"(n = {self.n}, no interval)")


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")


def _percentile_bootstrap(
    samples: tuple[npt.NDArray[np.float64], ...],
    statistic: Callable[..., Any],
    confidence: float,
    seed: int,
    n_resamples: int,
) -> tuple[float, float]:
    """scipy.stats.bootstrap, percentile method, each sample resampled on its own (axis -1).

    Percentile rather than BCa: BCa's acceleration is estimated by the jackknife, which for a median of
    five to ten runs is degenerate or erratic, while the percentile interval of a median stays close to
    the distribution-free order-statistic interval.
    """
    # scipy is the report extra's; the harness imports this module (aggregates) without it.
    from scipy import stats as sps

    res = sps.bootstrap(
        samples,
        statistic,
        n_resamples=n_resamples,
        vectorized=True,
        paired=False,
        axis=-1,
        confidence_level=confidence,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    # Interpolating between equal values can leave the ends a rounding error apart in either order.
    return min(low, high), max(low, high)


def _median_stat(x: npt.NDArray[np.float64], axis: int = -1) -> Any:
    return np.median(x, axis=axis)


def _coverage_note(n: int, confidence: float) -> str:
    bound = 1.0 - 2.0 ** (1 - n)
    if bound >= confidence:
        return ""
    return f"; with {n} values it covers at most {100 * bound:.1f} %, not {100 * confidence:g} %"


def _median_estimate(
    values: npt.NDArray[np.float64],
    noun: str,
    over: str,
    confidence: float,
    seed: int,
    n_resamples: int,
) -> Estimate:
    n = int(values.size)
    centre = float(np.median(values))
    if n < MIN_RUNS_FOR_INTERVAL:
        return Estimate(centre, None, None, n, f"median of {n} {noun}: too few for an interval")
    low, high = _percentile_bootstrap((values,), _median_stat, confidence, seed, n_resamples)
    note = f"median of {n} {noun}, {100 * confidence:g} % percentile bootstrap over {over}"
    return Estimate(centre, low, high, n, note + _coverage_note(n, confidence))


def median_ci(
    values: Values,
    confidence: float = DEFAULT_CONFIDENCE,
    *,
    seed: int = DEFAULT_SEED,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    unit: str = "runs",
) -> Estimate:
    """A point's figure: the median over its runs, with a percentile-bootstrap interval over runs.

    One value per run (the run's overall latency, its accuracy, its mean procedure time ...), or per
    block (``unit`` names which, for the method note). With fewer than ``MIN_RUNS_FOR_INTERVAL`` values
    it returns the median without an interval.
    """
    _check_confidence(confidence)
    arr = _as_array(values, "median_ci()")
    return _median_estimate(arr, unit, unit, confidence, seed, n_resamples)


def _common_blocks(
    a_by_block: Mapping[int, float], b_by_block: Mapping[int, float], what: str
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    blocks = sorted(set(a_by_block) & set(b_by_block))
    if not blocks:
        raise ValueError(f"{what} needs at least one block that both points ran in, got none")
    a = _as_array([a_by_block[k] for k in blocks], what)
    b = _as_array([b_by_block[k] for k in blocks], what)
    return a, b


def paired_ratio_ci(
    a_by_block: Mapping[int, float],
    b_by_block: Mapping[int, float],
    confidence: float = DEFAULT_CONFIDENCE,
    *,
    seed: int = DEFAULT_SEED,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
) -> Estimate:
    """Median over blocks of the per-block ratio a/b, with a percentile-bootstrap interval over blocks.

    Runs are paired by block index (the key), not by position; blocks only one side ran in are left
    out. The median rather than the geometric mean: one block slowed by other load moves a mean of
    log-ratios by a whole 1/n of its log-slowdown, and the median not at all. Values must be positive
    (times).
    """
    _check_confidence(confidence)
    a, b = _common_blocks(a_by_block, b_by_block, "paired_ratio_ci()")
    if np.any(a <= 0) or np.any(b <= 0):
        raise ValueError("paired_ratio_ci() needs positive values (times), got zero or less")
    return _median_estimate(a / b, "per-block ratios", "blocks", confidence, seed, n_resamples)


def paired_difference_ci(
    a_by_block: Mapping[int, float],
    b_by_block: Mapping[int, float],
    confidence: float = DEFAULT_CONFIDENCE,
    *,
    seed: int = DEFAULT_SEED,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
) -> Estimate:
    """Median over blocks of the per-block difference a − b, with a percentile-bootstrap interval over
    blocks; for figures that may be zero (exit counts, accuracies), where a ratio is undefined."""
    _check_confidence(confidence)
    a, b = _common_blocks(a_by_block, b_by_block, "paired_difference_ci()")
    return _median_estimate(a - b, "per-block differences", "blocks", confidence, seed, n_resamples)


def _unpaired(
    a: Values,
    b: Values,
    op: Callable[[Any, Any], Any],
    what: str,
    confidence: float,
    seed: int,
    n_resamples: int,
) -> Estimate:
    _check_confidence(confidence)
    x, y = _as_array(a, f"{what} sample a"), _as_array(b, f"{what} sample b")
    n = min(int(x.size), int(y.size))
    centre = float(op(np.median(x), np.median(y)))
    label = f"{what} of medians, {x.size} and {y.size} unpaired runs"
    if n < MIN_RUNS_FOR_INTERVAL:
        return Estimate(centre, None, None, n, f"{label}: too few for an interval")

    def stat(xs: npt.NDArray[np.float64], ys: npt.NDArray[np.float64], axis: int = -1) -> Any:
        return op(np.median(xs, axis=axis), np.median(ys, axis=axis))

    low, high = _percentile_bootstrap((x, y), stat, confidence, seed, n_resamples)
    return Estimate(
        centre, low, high, n, f"{label}, {100 * confidence:g} % percentile bootstrap over each side's runs"
    )


def unpaired_ratio_ci(
    a: Values,
    b: Values,
    confidence: float = DEFAULT_CONFIDENCE,
    *,
    seed: int = DEFAULT_SEED,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
) -> Estimate:
    """Ratio of the medians median(a)/median(b), bootstrapping each point's runs on their own.

    For runs without a block index: they ran one point after another, so run i of one point and run i
    of another shared no time window, and pairing them would claim a cancellation that never happened.
    ``n`` is the smaller number of runs. Values must be positive (times).
    """
    if np.any(np.asarray(a, dtype=np.float64) <= 0) or np.any(np.asarray(b, dtype=np.float64) <= 0):
        raise ValueError("unpaired_ratio_ci() needs positive values (times), got zero or less")
    return _unpaired(a, b, np.divide, "ratio", confidence, seed, n_resamples)


def unpaired_difference_ci(
    a: Values,
    b: Values,
    confidence: float = DEFAULT_CONFIDENCE,
    *,
    seed: int = DEFAULT_SEED,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
) -> Estimate:
    """Difference of the medians median(a) − median(b), bootstrapping each point's runs on their own."""
    return _unpaired(a, b, np.subtract, "difference", confidence, seed, n_resamples)


def verdict(
    estimate: Estimate | None,
    expect: Expect,
    null: float = 1.0,
    *,
    min_n: int = MIN_RUNS_FOR_VERDICT,
) -> str:
    """Judge a claim from an interval: ``supported`` when the whole interval lies on the claimed side of
    ``null`` (1.0 for ratios, 0.0 for differences), ``contradicted`` when it lies wholly on the other
    side, ``inconclusive`` when it contains ``null``, and ``not tested`` without an estimate, without an
    interval, or with fewer than ``min_n`` runs or blocks behind it."""
    if expect not in ("greater", "less"):
        raise ValueError(f"expect must be 'greater' or 'less', got {expect!r}")
    if estimate is None or estimate.interval is None or estimate.n < min_n:
        return NOT_TESTED
    low, high = estimate.interval
    above, below = low > null, high < null
    if (above and expect == "greater") or (below and expect == "less"):
        return SUPPORTED
    if above or below:
        return CONTRADICTED
    return INCONCLUSIVE
