"""The paper's claims, each checked against the results at hand — computed, never written in.

Every comparison is strict ("more", "faster"): a tie does not support a claim. A claim with no data to
test it says so rather than passing.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

from reports import stats
from reports.tables import Cell, Scenario, Table

SUPPORTED = "supported"
NOT_SUPPORTED = "not supported"
NOT_TESTED = "not tested (no data)"


@dataclass(frozen=True)
class Claim:
    """One claim of the paper, the verdict of these results, and the numbers behind it."""

    statement: str
    passed: int
    tested: int
    unit: str
    evidence: str

    def __post_init__(self) -> None:
        if not 0 <= self.passed <= self.tested:
            raise ValueError(f"claim {self.statement!r}: passed {self.passed} not in 0..{self.tested}")

    @property
    def verdict(self) -> str:
        if self.tested == 0:
            return NOT_TESTED
        if self.passed == self.tested:
            return SUPPORTED
        if self.passed == 0:
            return NOT_SUPPORTED
        return f"partly ({self.passed} of {self.tested} {self.unit})"


def _sem_vs_mem(
    scn: Scenario,
    t: float,
    statement: str,
    metric: str,
    better: Callable[[float, float], bool],
    fmt: str,
    scale: float = 1.0,
) -> Claim:
    passed = tested = 0
    parts = []
    for e in scn.exits(t):
        s, m = scn.get("sem", e, t), scn.get("mem", e, t)
        sv = None if s is None else s.metric(metric)
        mv = None if m is None else m.metric(metric)
        if sv is None or mv is None:
            continue
        tested += 1
        ok = better(sv, mv)
        passed += ok
        parts.append(f"{e}: {sv * scale:{fmt}} vs {mv * scale:{fmt}}{'' if ok else ' ✗'}")
    return Claim(
        statement, passed, tested, "exit points", "SEM vs MEM at exit " + "; ".join(parts) if parts else ""
    )


def _later_exits(scn: Scenario, t: float, kind: str) -> Claim:
    points = [(e, r.metric("local_exits")) for e in scn.exits(t) if (r := scn.get(kind, e, t)) is not None]
    pairs = list(itertools.pairwise(points))
    passed = sum(1 for (_, a), (_, b) in pairs if a is not None and b is not None and b > a)
    evidence = ", ".join(f"{e}: {v:.0f}" for e, v in points if v is not None)
    return Claim(
        f"{kind.upper()}: later exit points exit more samples locally",
        passed,
        len(pairs),
        "consecutive exit pairs",
        f"local exits by exit point: {evidence}" if points else "",
    )


def _threshold_trend(
    scn: Scenario, statement: str, metric: str, scale: float, fmt: str, *, lower_raises: bool = True
) -> Claim:
    """Claim 'a lower T raises (or lowers) <metric>': over consecutive thresholds of each configuration."""
    passed = tested = 0
    low_vals: list[float] = []
    high_vals: list[float] = []
    failures = []
    configs = sorted({(r.kind, r.exit) for r in scn.results}, key=lambda k: (k[0], k[1] or 0))
    ts = scn.thresholds
    for kind, e in configs:
        series: list[tuple[float, float]] = []
        for t in ts:
            r = scn.get(kind, e, t)
            v = None if r is None else r.metric(metric)
            if v is not None:
                series.append((t, v))
        if len(series) < 2:
            continue
        low_vals.append(series[0][1] * scale)
        high_vals.append(series[-1][1] * scale)
        for (t_lo, v_lo), (t_hi, v_hi) in itertools.pairwise(series):
            tested += 1
            if (v_lo > v_hi) if lower_raises else (v_lo < v_hi):
                passed += 1
            else:
                name = f"SEM-{e}" if kind == "sem" else f"MEM@{e}" if kind == "mem" else kind
                failures.append(f"{name} T={t_lo:g}→{t_hi:g}: {v_lo * scale:{fmt}}→{v_hi * scale:{fmt}}")
    evidence = ""
    if tested:
        evidence = (
            f"median over configurations at T={ts[0]:g}: {stats.median(low_vals):{fmt}}, "
            f"at T={ts[-1]:g}: {stats.median(high_vals):{fmt}}"
        )
        if failures:
            shown = "; ".join(failures[:4]) + (f"; … {len(failures) - 4} more" if len(failures) > 4 else "")
            evidence += f". Against: {shown}"
    return Claim(statement, passed, tested, "threshold steps", evidence)


def evaluate_claims(scn: Scenario, t: float) -> list[Claim]:
    """Check each of the paper's claims on one scenario; per-exit claims at threshold ``t``."""
    more = lambda a, b: a > b  # noqa: E731
    less = lambda a, b: a < b  # noqa: E731
    return [
        _sem_vs_mem(
            scn, t, "SEM exits more samples locally than MEM at every exit point", "local_exits", more, ".0f"
        ),
        _sem_vs_mem(
            scn,
            t,
            "SEM is more accurate (overall) than MEM at every exit point",
            "overall_accuracy",
            more,
            ".2f",
            100.0,
        ),
        _sem_vs_mem(
            scn,
            t,
            "SEM is more accurate at the edge than MEM at every exit point",
            "edge_accuracy",
            more,
            ".2f",
            100.0,
        ),
        _sem_vs_mem(
            scn,
            t,
            "SEM is faster (overall latency) than MEM at every exit point",
            "overall_latency_ms",
            less,
            ".3f",
        ),
        _later_exits(scn, t, "sem"),
        _later_exits(scn, t, "mem"),
        _threshold_trend(
            scn, "A lower T exits fewer samples locally", "local_exits", 1.0, ".0f", lower_raises=False
        ),
        _threshold_trend(scn, "A lower T raises overall accuracy", "overall_accuracy", 100.0, ".2f"),
        _threshold_trend(scn, "A lower T raises overall latency", "overall_latency_ms", 1.0, ".3f"),
    ]


def claims_table(scn: Scenario, t: float) -> Table:
    """The claims with their verdicts and numbers."""
    rows: list[tuple[Cell, ...]] = [(c.statement, c.verdict, c.evidence) for c in evaluate_claims(scn, t)]
    return Table(
        f"The paper's claims against these results ({scn.caption(t)})",
        ("claim", "verdict", "numbers"),
        tuple(rows),
        ("", "", ""),
        "Strict comparisons (a tie does not support a claim); accuracies in %, latencies in ms, medians across "
        "runs.",
    )


def sem_vs_mem_table(scn: Scenario, t: float) -> Table:
    """SEM against MEM at each exit point, with a Mann-Whitney test on per-batch latencies when stored."""
    rows: list[tuple[Cell, ...]] = []
    for e in scn.exits(t):
        s, m = scn.get("sem", e, t), scn.get("mem", e, t)
        if s is None or m is None:
            continue
        sa, ma = s.metric("overall_accuracy"), m.metric("overall_accuracy")
        sl, ml = s.metric("overall_latency_ms"), m.metric("overall_latency_ms")
        sb, mb = s.batch_latencies(), m.batch_latencies()
        p = stats.mann_whitney_u(sb, mb)[1] if sb and mb else None
        rows.append(
            (
                e,
                s.metric("local_exits"),
                m.metric("local_exits"),
                None if sa is None else 100 * sa,
                None if ma is None else 100 * ma,
                sl,
                ml,
                p,
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
            "batch latency p (MWU)",
        ),
        tuple(rows),
        ("g", ".0f", ".0f", ".2f", ".2f", ".3f", ".3f", ".3g"),
        "p: two-sided Mann-Whitney U test of SEM vs MEM per-batch latencies (normal approximation with tie "
        "correction); – when the results files hold no per-batch latencies.",
    )
