"""The CI latency regression check: compare a results file against a baseline, run by run.

The run is the unit of replication: batches of one run share its machine state (where the kernel
placed the nodes, how warm they were, what else ran), so they are not independent samples and no
verdict rests on them. Each run gives one value per metric -- the median of its per-batch times --
and the two sides are compared through those values. The metrics: overall (the per-batch end-to-end
time), edge and cloud (the per-batch time along each path) and every procedure.

1. **Calibration.** Each run recorded ``calibration_ms``, a fixed CPU workload timed in that run, so
   ``r = min(baseline calibrations) / min(current calibrations)`` -- each side's least disturbed
   timing -- says how much faster the baseline's CPU was. The current side's values are multiplied by
   ``1 + (r − 1) · share``, where ``share`` is the part of the metric that scales with CPU speed: 1 on
   an unshaped link (transfers are serialisation and kernel copies); on a shaped link (a rate or a
   delay) 1 for the compute procedures 2 and 4, 0 for the transfers 1, 3-1, 3-2 and 5, and for the
   edge, cloud and overall paths the baseline's compute on the path over the path's time. A uniformly
   slower machine then does not look like a regression, and a link-bound run is not over-corrected.
   (``--no-calibration`` compares raw times.)
2. **The interval.** ``R`` = median over the current runs / median over the baseline runs, with its
   two-sided ``1 − alpha`` percentile-bootstrap interval ``[lo, hi]``, each side's runs resampled on
   their own (:func:`reports.stats.unpaired_ratio_ci`). Unpaired: the baseline was recorded earlier,
   so no baseline run shared a time window with a current run, and pairing them would claim a
   cancellation of shared load that never happened. Fewer than ``MIN_RUNS`` runs on a side give no
   interval, and every verdict is then *inconclusive* -- never a pass.
3. **The verdict.** With ``t = max(tolerance, min_delta_ms / baseline median)`` (a change must exceed
   the tolerance and ``min_delta_ms`` milliseconds to matter):

   - *regression*: ``lo > 1`` and ``R > 1 + t``. The interval's lower end says the slow-down is more
     than the runs' own spread; the point estimate says it is large enough to matter. Asking for
     ``lo > 1 + t`` instead would need, with five runs a side and a 5 % run-to-run variation, about a
     25 % slow-down before a 10 % tolerance reliably flags it; ``lo > 1`` alone would flag real but
     negligible changes. By chance ``lo > 1`` holds in at most about ``alpha / 2`` of no-change
     comparisons.
   - *improvement*: ``hi < 1`` and ``R < 1 − t``.
   - *pass*: the whole interval within ``[1 − t, 1 + t]``: any change is within the tolerance.
   - *inconclusive*: anything else -- an interval too wide to rule a change in or out.

4. **A quiet machine.** Each run recorded how much CPU *other* programs used while it ran
   (``host_other_cpu_percent``, 100 = one core). If either side's busiest run exceeds ``busy_limit``,
   a regression (or improvement) found on it is *inconclusive*.
5. **Confirmation.** When ``check`` runs the configuration itself, a regression (or improvement) must
   show again in a fresh re-run compared with the baseline by the same rule (:func:`confirmed`); one that
   does not is *inconclusive*. A whole machine can be slow for several runs in a row, every run of one
   side together, which no interval over that side's runs can see; a regression in the code shows again.

Exit codes: 0 no regression (pass, improvement or inconclusive), 1 at least one regression, 2 unusable
input.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from tabulate import tabulate

from contract.names import PROCEDURES
from contract.results import Results
from reports import stats

from .busy import other_load
from .errors import HarnessError, ResultsError
from .results import as_results

#: Metric name → key of ``per_batch_ms``.
METRICS: dict[str, str] = {
    "overall": "latency",
    "edge": "edge",
    "cloud": "cloud",
    **{f"procedure {p}": p for p in PROCEDURES},
}
#: Configuration keys that must agree, or the two files measure different experiments.
WORKLOAD_KEYS = (
    "model",
    "exit",
    "threshold",
    "batch_size",
    "dataset",
    "samples",
    "checkpoint_sha256",
    "links",
    # where and how it ran: batches in flight, the edge's limits and the cloud's CPUs change latencies
    "inflight",
    "edge_limits",
    "cloud_cpuset",
)
DEFAULT_TOLERANCE = 0.10
#: The interval is the two-sided 1 − alpha one: 95 %, as every interval of the reports.
DEFAULT_ALPHA = 0.05
DEFAULT_MIN_SAMPLES = 8
DEFAULT_MIN_DELTA_MS = 0.5
#: Mean CPU of other programs (100 = one core) above which a run's machine counts as busy.
DEFAULT_BUSY_LIMIT = 50.0
#: Runs a side needs for an interval (``record-baseline --repeat 3`` or more; 5 is better: with 3 a
#: side, ``lo > 1`` means only that every current run was slower than every baseline run).
MIN_RUNS = stats.MIN_RUNS_FOR_INTERVAL

VERDICTS = ("pass", "improvement", "inconclusive", "regression", "absent")
CONFIRMED_VERDICTS = ("regression", "improvement")


@dataclass(frozen=True)
class Comparison:
    """One metric's verdict: each side's median over its runs (of the runs' per-batch medians, ms), the
    ratio current / baseline with its interval (None: too few runs), and the runs behind each side."""

    metric: str
    baseline_median: float | None
    current_median: float | None
    change: float | None  # ratio of the medians − 1
    low: float | None  # the ratio's interval
    high: float | None
    n_baseline: int  # runs with a batch on this path
    n_current: int
    verdict: str
    note: str = ""

    def __post_init__(self) -> None:
        if self.verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, not {self.verdict!r}")
        if (self.low is None) != (self.high is None):
            raise ValueError("an interval has both ends or neither")


@dataclass(frozen=True)
class CheckReport:
    comparisons: tuple[Comparison, ...]
    calibration_ratio: float | None
    tolerance: float
    alpha: float
    host_load: tuple[float | None, float | None] = (None, None)  # (baseline, current), 100 = one core
    busy_limit: float = DEFAULT_BUSY_LIMIT
    min_delta_ms: float = DEFAULT_MIN_DELTA_MS
    confirmations: int = 0  # fresh re-runs that each regression and improvement had to show again in
    runs: tuple[int, int] = (0, 0)  # (baseline, current) runs in the files

    @property
    def regressions(self) -> list[Comparison]:
        return [c for c in self.comparisons if c.verdict == "regression"]

    @property
    def changes(self) -> list[Comparison]:
        """The regressions and improvements: the verdicts a re-run must confirm (:func:`confirmed`)."""
        return [c for c in self.comparisons if c.verdict in CONFIRMED_VERDICTS]

    @property
    def too_few_runs(self) -> bool:
        """Whether a side holds fewer than ``MIN_RUNS`` runs, so that no metric could be judged."""
        return min(self.runs) < MIN_RUNS

    @property
    def exit_code(self) -> int:
        return 1 if self.regressions else 0


def _calibrations(results: Results) -> list[float | None]:
    return [
        run.calibration_ms if run.calibration_ms is not None and run.calibration_ms > 0 else None
        for run in results.runs
    ]


def host_load(results: Results) -> float | None:
    """The busiest run's mean CPU use by other programs (100 = one core); None if not recorded."""
    loads = [load for run in results.runs if (load := other_load(run)) is not None]
    return max(loads) if loads else None


#: Compute procedures (scale with CPU speed) and transfers (do not).
COMPUTE = ("2", "4")
TRANSFERS = ("1", "3-1", "3-2", "5")


def run_medians(results: Results, key: str) -> list[float]:
    """One value per run: the median of the run's per-batch times of ``key`` (runs with none left out)."""
    return [stats.median(values) for run in results.runs if (values := run.per_batch_ms.get(key))]


def compute_share(baseline: Results, key: str) -> float:
    """The part of metric ``key`` that scales with CPU speed, from the baseline (in [0, 1])."""
    links = baseline.config.links
    shaped = any(
        isinstance(spec, dict)
        and (spec.get("rate") or (spec.get("delay") or "0ms") not in ("0ms", "0s", "0"))
        for spec in links.values()
    )
    if key in COMPUTE or not shaped:
        return 1.0
    if key in TRANSFERS:
        return 0.0

    def med(k: str) -> float:
        values = run_medians(baseline, k)
        return stats.median(values) if values else 0.0

    total = med(key)
    if total <= 0:
        return 1.0
    compute = med("2") if key == "edge" else med("2") + med("4")
    return min(1.0, max(0.0, compute / total))


def _batches(results: Results, key: str) -> int:
    return sum(len(run.per_batch_ms.get(key, ())) for run in results.runs)


def check_compatible(baseline: Results | Mapping[str, Any], current: Results | Mapping[str, Any]) -> None:
    """Refuse to compare results of different experiments (``ResultsError``, exit code 2)."""
    baseline, current = as_results(baseline, "the baseline"), as_results(current, "the current run")
    base, cur = baseline.config.to_json(), current.config.to_json()
    diffs = [
        f"{key}: {base.get(key)!r} vs {cur.get(key)!r}"
        for key in WORKLOAD_KEYS
        if base.get(key) != cur.get(key)
    ]
    # The congestion control the nodes' connections used (None: the file does not say, either way):
    # with loss on the link, CUBIC against BBR more than doubled procedure 3-2.
    ccs = [r.config.congestion_control for r in (baseline, current)]
    if None not in ccs and ccs[0] != ccs[1]:
        diffs.append(f"TCP congestion control: {ccs[0]!r} vs {ccs[1]!r}")
    if diffs:
        raise ResultsError(
            "the baseline and the current results measure different experiments ("
            + "; ".join(diffs)
            + "); record a new baseline with `python -m harness record-baseline`"
        )


def _needs_scipy() -> None:
    try:
        import scipy.stats  # noqa: F401 -- the intervals are scipy.stats.bootstrap's
    except ModuleNotFoundError as exc:
        raise HarnessError(
            "the check's run-level intervals need scipy, a dependency of localexit: pip install scipy"
        ) from exc


def judge(
    base: Sequence[float],
    cur: Sequence[float],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    alpha: float = DEFAULT_ALPHA,
    min_delta_ms: float = DEFAULT_MIN_DELTA_MS,
) -> tuple[str, str, stats.Estimate]:
    """The verdict on one metric from its per-run values (ms) on each side, by the module's rule 3:
    ``(verdict, note, estimate of current / baseline)``. Busy machines and confirmation are the
    caller's."""
    est = stats.unpaired_ratio_ci(cur, base, 1.0 - alpha)
    if est.interval is None:
        return (
            "inconclusive",
            f"too few runs for an interval ({len(base)} baseline, {len(cur)} current; at least {MIN_RUNS} "
            "a side are needed)",
            est,
        )
    lo, hi = est.interval
    band = max(tolerance, min_delta_ms / stats.median(base))
    if stats.verdict(est, "greater", 1.0, min_n=MIN_RUNS) == stats.SUPPORTED and est.value > 1 + band:
        return "regression", "", est
    if stats.verdict(est, "less", 1.0, min_n=MIN_RUNS) == stats.SUPPORTED and est.value < 1 - band:
        return "improvement", "", est
    limit = f"±{100 * tolerance:g}%" + (f" (±{min_delta_ms:g} ms)" if band > tolerance else "")
    if 1 - band <= lo and hi <= 1 + band:
        return "pass", "" if band == tolerance else f"within {limit}", est
    if lo <= 1 <= hi:
        return "inconclusive", f"interval holds 1 and reaches beyond {limit}", est
    return "inconclusive", f"a change within {limit} at the median, whose interval reaches beyond", est


def compare(
    baseline: Results | Mapping[str, Any],
    current: Results | Mapping[str, Any],
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    alpha: float = DEFAULT_ALPHA,
    min_samples: int = DEFAULT_MIN_SAMPLES,
    use_calibration: bool = True,
    busy_limit: float = DEFAULT_BUSY_LIMIT,
    min_delta_ms: float = DEFAULT_MIN_DELTA_MS,
) -> CheckReport:
    """Apply the module's rule to every metric. A results document given as decoded JSON is read
    through the contract (``ResultsError`` if it is not a usable results file). ``alpha``: the
    interval is the two-sided ``1 − alpha`` one; ``min_samples``: fewer batches than this on a side
    (over all its runs) make a metric inconclusive."""
    if tolerance < 0 or not 0 < alpha < 1 or min_delta_ms < 0:
        raise ValueError("tolerance and min_delta_ms must be ≥ 0 and alpha in (0, 1)")
    baseline, current = as_results(baseline, "the baseline"), as_results(current, "the current run")
    for results, side in ((baseline, "baseline"), (current, "current run")):
        if not any(run.per_batch_ms.get("latency") for run in results.runs):
            raise ResultsError(
                f"the {side} records no per-batch times (per_batch_ms), which the check compares"
            )
    check_compatible(baseline, current)
    _needs_scipy()
    base_cal = _calibrations(baseline)
    cur_cal = _calibrations(current)
    ratio: float | None = None
    cur_scale = 1.0
    if use_calibration and all(c is not None for c in base_cal + cur_cal):
        # Each side's best calibration, like each calibration is its best repetition: the machine's
        # speed when undisturbed. A run's calibration may catch only a slow state of a CPU that
        # switches between two; the best of a side does not.
        reference = min(c for c in base_cal if c is not None)
        best = min(c for c in cur_cal if c is not None)
        cur_scale = reference / best
        ratio = best / reference
    loads = (host_load(baseline), host_load(current))
    busy = [
        f"{side} ran while other programs used {load:.0f}% CPU"
        for side, load in zip(("baseline", "current"), loads, strict=True)
        if load is not None and load > busy_limit
    ]

    comparisons = []
    for metric, key in METRICS.items():
        share = compute_share(baseline, key)
        base = run_medians(baseline, key)
        scale = 1 + (cur_scale - 1) * share
        cur = [v * scale for v in run_medians(current, key)]
        if not base and not cur:
            comparisons.append(
                Comparison(metric, None, None, None, None, None, 0, 0, "absent", "no batch on this path")
            )
            continue
        m_base = stats.median(base) if base else None
        m_cur = stats.median(cur) if cur else None
        note = ""
        if not base or not cur:
            note = f"no batch on this path in the {'baseline' if not base else 'current run'}"
        elif min(_batches(baseline, key), _batches(current, key)) < min_samples:
            note = f"fewer than {min_samples} batches on one side"
        elif min(base) <= 0 or min(cur) <= 0:
            note = "a run's median time is 0: no ratio to take"
        if note:
            comparisons.append(
                Comparison(metric, m_base, m_cur, None, None, None, len(base), len(cur), "inconclusive", note)
            )
            continue
        verdict, note, est = judge(base, cur, tolerance=tolerance, alpha=alpha, min_delta_ms=min_delta_ms)
        if verdict in CONFIRMED_VERDICTS and busy:
            verdict, note = "inconclusive", f"machine busy: {'; '.join(busy)} (limit {busy_limit:g}%)"
        comparisons.append(
            Comparison(
                metric, m_base, m_cur, est.value - 1.0, est.low, est.high, len(base), len(cur), verdict, note
            )
        )
    return CheckReport(
        tuple(comparisons),
        ratio,
        tolerance,
        alpha,
        loads,
        busy_limit,
        min_delta_ms,
        runs=(len(baseline.runs), len(current.runs)),
    )


def confirmed(report: CheckReport, again: CheckReport) -> CheckReport:
    """``report`` with each regression and improvement kept only where ``again`` -- the same check of a
    fresh re-run of the configuration against the same baseline -- found the same; the others become
    inconclusive. Every other verdict stays as it was."""
    again_by_metric = {c.metric: c for c in again.comparisons}
    out = []
    for c in report.comparisons:
        kept = c
        if c.verdict in CONFIRMED_VERDICTS:
            r = again_by_metric.get(c.metric)
            seen = "absent" if r is None else r.verdict
            change = "" if r is None or r.change is None else f"{100 * r.change:+.1f}%, "
            if seen == c.verdict:
                kept = replace(c, note=_join(c.note, f"shown again by a re-run ({change}{seen})"))
            else:
                kept = replace(
                    c,
                    verdict="inconclusive",
                    note=_join(c.note, f"{c.verdict} not shown again by a re-run ({change}{seen})"),
                )
        out.append(kept)
    return replace(report, comparisons=tuple(out), confirmations=report.confirmations + 1)


def _join(*notes: str) -> str:
    return "; ".join(n for n in notes if n)


def _pct(ratio: float) -> str:
    return f"{100 * (ratio - 1):+.0f}%"


def format_report(report: CheckReport) -> str:
    rows = []
    for c in report.comparisons:
        rows.append(
            [
                c.metric,
                "–" if c.baseline_median is None else f"{c.baseline_median:.3f}",
                "–" if c.current_median is None else f"{c.current_median:.3f}",
                "–" if c.change is None else f"{100 * c.change:+.1f}%",
                "–" if c.low is None or c.high is None else f"[{_pct(c.low)}, {_pct(c.high)}]",
                f"{c.n_baseline}/{c.n_current}",
                c.verdict.upper() if c.verdict == "regression" else c.verdict,
                c.note,
            ]
        )
    cal = (
        "calibration: not applied"
        if report.calibration_ratio is None
        else f"calibration: this machine ran the fixed workload at {report.calibration_ratio:.3f}× the "
        "baseline's time; current latencies are scaled by the inverse"
    )
    confidence = f"{100 * (1 - report.alpha):g}%"
    table = tabulate(
        rows,
        headers=[
            "latency (ms/batch, median of runs)",
            "baseline",
            "current",
            "change",
            f"{confidence} interval",
            "runs",
            "verdict",
            "note",
        ],
    )
    n_reg = len(report.regressions)
    verdict = (
        f"REGRESSION in {n_reg} metric(s): {', '.join(c.metric for c in report.regressions)}"
        if n_reg
        else "no regression"
    )
    if report.too_few_runs:
        verdict += (
            f" -- but NOT a pass: {report.runs[0]} baseline and {report.runs[1]} current run(s), and an "
            f"interval needs at least {MIN_RUNS} a side (record the baseline with --repeat 5)"
        )
    rule = (
        "rule: each run gives its median per-batch time; change = median over current runs / median "
        f"over baseline runs − 1, with its {confidence} bootstrap interval over each side's runs. "
        f"regression = interval above 0 and change > {100 * report.tolerance:g}% and > "
        f"{report.min_delta_ms:g} ms; pass = interval within that band; otherwise inconclusive; "
        f"on a machine whose other programs used ≤ {report.busy_limit:g}% CPU"
    )
    load = ", ".join(
        f"{side} {'?' if value is None else f'{value:.0f}%'}"
        for side, value in zip(("baseline", "current"), report.host_load, strict=True)
    )
    rule += f" (measured: {load})"
    if report.confirmations:
        rule += (
            f"\nconfirmation: each regression and improvement was checked again on {report.confirmations} "
            "fresh re-run(s) and stands only where every re-run showed it too"
        )
    return "\n".join([cal, rule, "", table, "", verdict])
