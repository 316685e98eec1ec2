"""The paper's claims, each judged from run-level intervals — computed, never written in.

A claim is a set of comparisons between two points: SEM-k against MEM at k, exit k against exit k+1,
or one threshold against the next. Each comparison is the median over blocks of the per-block
difference (exit counts, accuracies: they can be zero) or ratio (latencies), with a bootstrap interval
over blocks (``reports.stats``), and ``stats.verdict`` judges it from that interval alone. A claim is
supported when every comparison is, contradicted when any is (each claim says "at every exit point" or
"with every step"), inconclusive otherwise, and not tested when no comparison could be.

Runs of files without block indices were not run side by side, so their points are compared unpaired
(the ratio or difference of the two medians, each point's runs resampled on their own).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from contract.names import LOCAL_EXIT_KINDS
from reports import stats
from reports.loader import ResultsFile, RunSeries
from reports.stats import CONTRADICTED, INCONCLUSIVE, NOT_TESTED, SUPPORTED, Estimate, Expect
from reports.tables import Cell, Scenario, Table

Measure = Literal["ratio", "difference"]

#: The null value of each measure: no difference, or a ratio of one.
NULL: dict[Measure, float] = {"ratio": 1.0, "difference": 0.0}
#: More comparisons than this are summarised in a claim's evidence rather than listed one by one.
MAX_LISTED = 8

METHOD_NOTE = (
    "Each comparison: the median over blocks of the per-block difference (exit counts in samples, "
    "accuracies in percentage points) or ratio (latencies), with its 95 % percentile-bootstrap interval "
    f"over blocks (scipy.stats.bootstrap, {stats.BOOTSTRAP_RESAMPLES} resamples, seed {stats.DEFAULT_SEED}); "
    "files whose runs carry no block are compared unpaired (ratio or difference of medians). A comparison "
    "is supported when its interval lies wholly on the claimed side, contradicted when wholly on the "
    f"other, and needs at least {stats.MIN_RUNS_FOR_VERDICT} blocks. A claim is supported when every "
    "comparison is, contradicted when any is, inconclusive otherwise."
)


def compare(a: RunSeries, b: RunSeries, measure: Measure) -> Estimate | None:
    """``a`` against ``b`` (a/b or a − b) across runs; None when either point has no value.

    Paired by block when both points' runs carry blocks they share; unpaired otherwise.
    """
    if not a.values or not b.values:
        return None
    if is_paired(a, b):
        pair = stats.paired_ratio_ci if measure == "ratio" else stats.paired_difference_ci
        return pair(a.by_block(), b.by_block())
    unpaired = stats.unpaired_ratio_ci if measure == "ratio" else stats.unpaired_difference_ci
    return unpaired(a.values, b.values)


def is_paired(a: RunSeries, b: RunSeries) -> bool:
    """Whether ``compare`` pairs the two by block (both carry blocks, and they share at least one)."""
    return a.blocks is not None and b.blocks is not None and bool(set(a.blocks) & set(b.blocks))


@dataclass(frozen=True)
class Comparison:
    """One comparison behind a claim: which two points, the estimate and its verdict."""

    label: str
    estimate: Estimate | None
    verdict: str
    paired: bool

    def __post_init__(self) -> None:
        if self.verdict not in stats.VERDICTS:
            raise ValueError(f"unknown verdict {self.verdict!r}")


def combine(verdicts: Sequence[str]) -> str:
    """The verdict of a claim that every comparison must bear out."""
    tested = [v for v in verdicts if v != NOT_TESTED]
    if not tested:
        return NOT_TESTED
    if CONTRADICTED in tested:
        return CONTRADICTED
    if len(tested) == len(verdicts) and all(v == SUPPORTED for v in tested):
        return SUPPORTED
    return INCONCLUSIVE


_MARK = {SUPPORTED: "", CONTRADICTED: " ✗", INCONCLUSIVE: " ?", NOT_TESTED: " (not tested)"}


@dataclass(frozen=True)
class Claim:
    """One claim of the paper, where it makes it, and the comparisons that judge it here."""

    statement: str
    section: str
    measure: str
    unit: str
    comparisons: tuple[Comparison, ...]
    fmt: str = ".3g"
    scale: float = 1.0

    @property
    def verdict(self) -> str:
        return combine([c.verdict for c in self.comparisons])

    def count(self, verdict: str) -> int:
        return sum(1 for c in self.comparisons if c.verdict == verdict)

    @property
    def evidence(self) -> str:
        """The numbers behind the verdict: each comparison or, when there are many, the range of the
        estimates and those that did not support the claim."""
        if not self.comparisons:
            return "no pair of points to compare"
        n = len(self.comparisons)
        counts = ", ".join(
            f"{k} {v}" for v in (SUPPORTED, CONTRADICTED, INCONCLUSIVE, NOT_TESTED) if (k := self.count(v))
        )
        text = f"{counts} of {n} {self.unit}"
        if n <= MAX_LISTED:
            text += f". {self.measure}: " + "; ".join(self._one(c) for c in self.comparisons)
        else:
            values = [c.estimate.value * self.scale for c in self.comparisons if c.estimate is not None]
            if values:
                text += f". {self.measure} from {min(values):{self.fmt}} to {max(values):{self.fmt}}"
            against = [c for c in self.comparisons if c.verdict != SUPPORTED]
            if against:
                text += "; not supported: " + "; ".join(self._one(c) for c in against[:MAX_LISTED])
                if len(against) > MAX_LISTED:
                    text += f"; … {len(against) - MAX_LISTED} more"
        if any(not c.paired for c in self.comparisons if c.estimate is not None):
            text += " (runs without blocks: compared unpaired)"
        return text

    def _one(self, c: Comparison) -> str:
        if c.estimate is None:
            return f"{c.label} no data"
        return f"{c.label} {c.estimate.text(self.fmt, self.scale)}{_MARK[c.verdict]}"


def _comparison(label: str, a: RunSeries, b: RunSeries, measure: Measure, expect: Expect) -> Comparison:
    est = compare(a, b, measure)
    return Comparison(label, est, stats.verdict(est, expect, NULL[measure]), is_paired(a, b))


def _name(kind: str, e: int | None) -> str:
    return f"SEM-{e}" if kind == "sem" else f"MEM@{e}" if kind == "mem" else kind


def sem_vs_mem(
    scn: Scenario,
    t: float,
    statement: str,
    metric: str,
    measure: Measure,
    expect: Expect,
    fmt: str,
    scale: float = 1.0,
) -> Claim:
    """SEM-k against MEM at k, at every exit point where both ran."""
    comps = []
    for e in scn.exits(t):
        s, m = scn.get("sem", e, t), scn.get("mem", e, t)
        if s is not None and m is not None:
            comps.append(_comparison(f"exit {e}", s.series(metric), m.series(metric), measure, expect))
    what = "SEM/MEM" if measure == "ratio" else "SEM − MEM"
    return Claim(statement, "§4.3", what, "exit points", tuple(comps), fmt, scale)


def later_exits(
    scn: Scenario,
    t: float,
    kind: str,
    statement: str,
    metric: str,
    expect: Expect,
    fmt: str,
    scale: float = 1.0,
) -> Claim:
    """Each exit point against the next one present (later − earlier), for one model kind."""
    points = [(e, r) for e in scn.exits(t) if (r := scn.get(kind, e, t)) is not None]
    comps = tuple(
        _comparison(f"{e0}→{e1}", r1.series(metric), r0.series(metric), "difference", expect)
        for (e0, r0), (e1, r1) in itertools.pairwise(points)
    )
    section = "§4.2" if kind == "sem" else "§4.3"
    return Claim(statement, section, "later − earlier", "exit steps", comps, fmt, scale)


def lower_threshold(
    scn: Scenario, statement: str, metric: str, measure: Measure, expect: Expect, fmt: str, scale: float = 1.0
) -> Claim:
    """Each configuration at each threshold against itself at the next higher one (lower T vs higher T)."""
    comps = []
    configs = sorted({(r.kind, r.exit) for r in scn.results}, key=lambda k: (k[0], k[1] or 0))
    for kind, e in configs:
        at = [(t, r) for t in scn.thresholds if (r := scn.get(kind, e, t)) is not None]
        for (t0, r0), (t1, r1) in itertools.pairwise(at):
            label = f"{_name(kind, e)} T {t0:g} vs {t1:g}"
            comps.append(_comparison(label, r0.series(metric), r1.series(metric), measure, expect))
    what = "lower T / higher T" if measure == "ratio" else "lower T − higher T"
    return Claim(statement, "§4.4", what, "threshold steps", tuple(comps), fmt, scale)


def evaluate_claims(scn: Scenario, t: float) -> list[Claim]:
    """Judge each of the paper's claims on one scenario; per-exit claims at threshold ``t``."""
    claims = [
        sem_vs_mem(
            scn,
            t,
            "SEM exits more samples locally than MEM at every exit point",
            "local_exits",
            "difference",
            "greater",
            "+.0f",
        ),
        sem_vs_mem(
            scn,
            t,
            "SEM is more accurate (overall) than MEM at every exit point",
            "overall_accuracy",
            "difference",
            "greater",
            "+.2f",
            100.0,
        ),
        sem_vs_mem(
            scn,
            t,
            "SEM is more accurate at the edge than MEM at every exit point",
            "edge_accuracy",
            "difference",
            "greater",
            "+.2f",
            100.0,
        ),
        sem_vs_mem(
            scn,
            t,
            "SEM is faster (overall latency) than MEM at every exit point",
            "overall_latency_ms",
            "ratio",
            "less",
            ".3f",
        ),
    ]
    trends: tuple[tuple[str, Expect, str, str, float], ...] = (
        ("local_exits", "greater", "later exit points exit more samples locally", "+.0f", 1.0),
        ("edge_accuracy", "greater", "edge accuracy rises with later exit points", "+.2f", 100.0),
        ("cloud_accuracy", "less", "cloud accuracy falls with later exit points", "+.2f", 100.0),
    )
    for metric, expect, what, fmt, scale in trends:
        for kind in LOCAL_EXIT_KINDS:
            claims.append(later_exits(scn, t, kind, f"{kind.upper()}: {what}", metric, expect, fmt, scale))
    claims += [
        lower_threshold(
            scn, "A lower T exits fewer samples locally", "local_exits", "difference", "less", "+.0f"
        ),
        lower_threshold(
            scn, "A lower T raises edge accuracy", "edge_accuracy", "difference", "greater", "+.2f", 100.0
        ),
        lower_threshold(
            scn, "A lower T raises cloud accuracy", "cloud_accuracy", "difference", "greater", "+.2f", 100.0
        ),
        lower_threshold(
            scn,
            "A lower T raises overall accuracy",
            "overall_accuracy",
            "difference",
            "greater",
            "+.2f",
            100.0,
        ),
        lower_threshold(
            scn, "A lower T raises overall latency", "overall_latency_ms", "ratio", "greater", ".3f"
        ),
    ]
    return claims


def claims_table(scn: Scenario, t: float, claims: Sequence[Claim] | None = None) -> Table:
    """The claims with their verdicts and numbers (pass ``claims`` to reuse an evaluation)."""
    judged = evaluate_claims(scn, t) if claims is None else claims
    rows: list[tuple[Cell, ...]] = [(c.statement, c.section, c.verdict, c.evidence) for c in judged]
    return Table(
        f"The paper's claims against these results ({scn.caption(t)})",
        ("claim", "paper", "verdict", "numbers: estimate [95 % interval]"),
        tuple(rows),
        ("", "", "", ""),
        METHOD_NOTE + " ✗ contradicted, ? inconclusive.",
    )


def _point_median(r: ResultsFile | None, metric: str, scale: float = 1.0) -> float | None:
    v = None if r is None else r.metric(metric)
    return None if v is None else v * scale


def sem_vs_mem_table(scn: Scenario, t: float) -> Table:
    """SEM against MEM at each exit point: exit counts, accuracy, and overall latency with the paired
    ratio SEM/MEM and its interval over blocks."""
    rows: list[tuple[Cell, ...]] = []
    for e in scn.exits(t):
        s, m = scn.get("sem", e, t), scn.get("mem", e, t)
        if s is None or m is None:
            continue
        sl, ml = s.series("overall_latency_ms"), m.series("overall_latency_ms")
        comp = _comparison(f"exit {e}", sl, ml, "ratio", "less")
        est = comp.estimate
        pairing = f"{est.n} blocks" if est is not None and comp.paired else "unpaired"
        rows.append(
            (
                e,
                _point_median(s, "local_exits"),
                _point_median(m, "local_exits"),
                _point_median(s, "overall_accuracy", 100.0),
                _point_median(m, "overall_accuracy", 100.0),
                _point_median(s, "overall_latency_ms"),
                _point_median(m, "overall_latency_ms"),
                None if est is None else est.value,
                None if est is None else est.interval_text(".3f"),
                pairing,
                comp.verdict,
            )
        )
    return Table(
        f"SEM vs MEM at each exit point ({scn.caption(t)})",
        (
            "exit",
            "SEM local (samples)",
            "MEM local (samples)",
            "SEM overall acc. (%)",
            "MEM overall acc. (%)",
            "SEM overall lat. (ms)",
            "MEM overall lat. (ms)",
            "lat. ratio SEM/MEM",
            "95 % interval",
            "pairing",
            "SEM faster?",
        ),
        tuple(rows),
        ("g", ".0f", ".0f", ".2f", ".2f", ".3f", ".3f", ".3f", "", "", ""),
        "Counts, accuracies and latencies: median across runs. Ratio: median over blocks of SEM/MEM overall "
        "latency in the same block, with its 95 % percentile-bootstrap interval over blocks (unpaired: ratio "
        "of medians, where runs carry no block).",
    )
